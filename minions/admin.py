from django.contrib import admin

from minions.models import MinionRun


@admin.register(MinionRun)
class MinionRunAdmin(admin.ModelAdmin):
    """Read-only audit of controlled-minion runs: append-only, even for superusers."""

    list_display = ("created", "env", "webstrate", "client_addr", "exit_code", "timed_out",
                    "truncated", "duration_ms", "warm", "files_count", "files_bytes", "error")
    list_filter = ("env", "timed_out", "truncated", "warm", "created")
    search_fields = ("webstrate", "origin", "client_addr", "container", "error")
    date_hierarchy = "created"

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
