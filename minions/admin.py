from django.contrib import admin
from django.utils.html import format_html

from herder.admin_display import millis, size, when, yes_no
from minions.models import MinionRun


@admin.register(MinionRun)
class MinionRunAdmin(admin.ModelAdmin):
    """Read-only audit of controlled-minion runs: append-only, even for superusers.
    A run is listed from its start (state running) to its end; a failed run
    shows the end of its stderr."""

    list_display = (
        "started_at",
        "state",
        "env",
        "webstrate",
        "client_addr",
        "exit_code",
        "timed_out_",
        "duration",
        "warm_",
        "files",
        "stderr",
        "error",
    )
    list_filter = ("state", "env", "timed_out", "truncated", "warm", "created")
    search_fields = ("webstrate", "origin", "client_addr", "container", "error")
    date_hierarchy = "created"
    fields = (
        "state",
        "started_at",
        "finished_at",
        "duration",
        "env",
        "image",
        "webstrate",
        "origin",
        "client_addr",
        "container",
        "warm_",
        "files",
        "output_name",
        "output",
        "exit_code",
        "timed_out_",
        "truncated_",
        "stdout",
        "stderr",
        "error",
        "stderr_end",
    )
    readonly_fields = fields

    @admin.display(description="started", ordering="created")
    def started_at(self, run: MinionRun) -> str:
        return when(run.created)

    @admin.display(description="finished", ordering="finished")
    def finished_at(self, run: MinionRun) -> str:
        return when(run.finished)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, run: MinionRun) -> str:
        return "running" if run.state == MinionRun.State.RUNNING else millis(run.duration_ms)

    @admin.display(description="timed out", ordering="timed_out")
    def timed_out_(self, run: MinionRun) -> str:
        return yes_no(run.timed_out)

    @admin.display(description="truncated", ordering="truncated")
    def truncated_(self, run: MinionRun) -> str:
        return yes_no(run.truncated)

    @admin.display(description="warm", ordering="warm")
    def warm_(self, run: MinionRun) -> str:
        return yes_no(run.warm)

    @admin.display(description="files", ordering="files_bytes")
    def files(self, run: MinionRun) -> str:
        return f"{run.files_count} ({size(run.files_bytes)})"

    @admin.display(description="output file", ordering="output_bytes")
    def output(self, run: MinionRun) -> str:
        return size(run.output_bytes)

    @admin.display(description="stdout", ordering="stdout_bytes")
    def stdout(self, run: MinionRun) -> str:
        return size(run.stdout_bytes)

    @admin.display(description="stderr", ordering="stderr_bytes")
    def stderr(self, run: MinionRun) -> str:
        return size(run.stderr_bytes)

    @admin.display(description="end of stderr (kept for failed runs)")
    def stderr_end(self, run: MinionRun) -> str:
        if not run.stderr_tail:
            return "-"
        return format_html(
            '<pre class="stderr-tail" style="white-space:pre-wrap;max-height:30em;overflow:auto;margin:0">{}</pre>',
            run.stderr_tail,
        )

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # The audit trail is append-only: nobody deletes a run from the admin.
        return False

    def get_actions(self, request) -> dict:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions
