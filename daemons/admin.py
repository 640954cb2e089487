"""Daemons for operators: who runs what, since when, at what cost; buttons to
stop a daemon and wipe a stopped daemon's volume (through the services, and
in the admin's log); the engine's daemon volumes with size and owner; a
console per running daemon (daemons/console.py)."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Case, IntegerField, Value, When
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from daemons.models import Daemon
from daemons.services import daemon_delete, daemon_stop, daemon_volumes, daemon_wipe_volume
from herder.admin_display import log_action, size, when, yes_no
from herder.errors import DaemonBusy


@admin.register(Daemon)
class DaemonAdmin(admin.ModelAdmin):
    list_display = ("full_name", "owner", "image", "state", "started_at", "stopped_at", "credits_used", "volume_kept")
    list_filter = ("state", "image", "started")
    search_fields = ("name", "full_name", "owner__email", "image", "container_id")
    date_hierarchy = "created"
    list_select_related = ("owner",)
    fields = (
        "full_name",
        "name",
        "owner",
        "image",
        "state",
        "ports",
        "host_ports",
        "container_id",
        "created_at",
        "started_at",
        "stopped_at",
        "metered_at",
        "credits_used",
        "volume",
        "volume_kept",
        "ledger",
    )
    readonly_fields = fields
    actions = ["stop_daemons"]
    change_form_template = "admin/daemons/daemon/change_form.html"

    def get_ordering(self, request: HttpRequest) -> list:
        # Running daemons first: the one running among many killed ones is on top.
        running = Case(
            When(state__in=[Daemon.State.RUNNING, Daemon.State.STARTING], then=Value(0)),
            default=Value(1),
            output_field=IntegerField(),
        )
        return [running.asc(), "-created"]

    @admin.display(description="created", ordering="created")
    def created_at(self, daemon: Daemon) -> str:
        return when(daemon.created)

    @admin.display(description="started", ordering="started")
    def started_at(self, daemon: Daemon) -> str:
        return when(daemon.started)

    @admin.display(description="stopped", ordering="stopped")
    def stopped_at(self, daemon: Daemon) -> str:
        return when(daemon.stopped)

    @admin.display(description="metered until")
    def metered_at(self, daemon: Daemon) -> str:
        return when(daemon.metered_until)

    @admin.display(description="volume kept")
    def volume_kept(self, daemon: Daemon) -> str:
        return yes_no(daemon.volume_removed is None) + (
            f" (wiped {when(daemon.volume_removed)})" if daemon.volume_removed else ""
        )

    @admin.display(description="ledger")
    def ledger(self, daemon: Daemon) -> str:
        url = reverse("admin:accounts_creditentry_changelist")
        return format_html('<a href="{}?subject={}">credits spent on it</a>', url, daemon.full_name)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        # Its page is for looking and for the buttons below, never for editing fields.
        return False

    def has_operate_permission(self, request) -> bool:
        # Stopping and wiping change what runs: not for view-only staff.
        return request.user.has_perm("daemons.change_daemon")

    # Deleting goes through the services: the container, its network and its
    # volume go with the row (charged to this moment), never left running unowned.
    def delete_model(self, request, obj) -> None:
        daemon_delete(obj)

    def delete_queryset(self, request, queryset) -> None:
        for daemon in queryset:
            daemon_delete(daemon)

    @admin.action(description="Stop the selected daemons (volumes kept)", permissions=["operate"])
    def stop_daemons(self, request, queryset) -> None:
        stopped = 0
        for daemon in queryset:
            if daemon.is_running:
                daemon_stop(daemon, state=Daemon.State.KILLED)
                log_action(request, daemon, "Stopped (volume kept)")
                stopped += 1
        self.message_user(request, f"Stopped {stopped} daemons.", messages.SUCCESS)

    def get_urls(self) -> list:
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/stop/", view(require_POST(self.stop_view)), name="daemons_daemon_stop"),
            path("<int:pk>/wipe/", view(require_POST(self.wipe_view)), name="daemons_daemon_wipe"),
            path("<int:pk>/console/", view(self.console_view), name="daemons_daemon_console"),
            path("volumes/", view(self.volumes_view), name="daemons_daemon_volumes"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = {"can_operate": self.has_operate_permission(request), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def _operated(self, request: HttpRequest, pk: int) -> Daemon:
        if not self.has_operate_permission(request):
            raise PermissionDenied
        return get_object_or_404(Daemon.objects.select_related("owner"), pk=pk)

    def _back(self, daemon: Daemon) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:daemons_daemon_change", args=[daemon.pk]))

    def stop_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        daemon = self._operated(request, pk)
        if daemon.is_running:
            daemon_stop(daemon, state=Daemon.State.KILLED)
            log_action(request, daemon, "Stopped (volume kept)")
            self.message_user(request, f"Stopped {daemon}; its volume is kept.", messages.SUCCESS)
        else:
            self.message_user(request, f"{daemon} is {daemon.state}, not running.", messages.WARNING)
        return self._back(daemon)

    def wipe_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        daemon = self._operated(request, pk)
        try:
            daemon_wipe_volume(daemon)
        except DaemonBusy as exc:
            self.message_user(request, str(exc.detail), messages.WARNING)
            return self._back(daemon)
        log_action(request, daemon, f"Wiped volume {daemon.volume}")
        self.message_user(request, f"Wiped the volume of {daemon}.", messages.SUCCESS)
        return self._back(daemon)

    def console_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        from daemons.console import admin_console

        return admin_console(self, request, get_object_or_404(Daemon, pk=pk))

    def volumes_view(self, request: HttpRequest) -> HttpResponse:
        """The engine's daemon volumes (this engine's, every deployment's), with
        their size and the daemon and owner that named them."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        rows = [{**v, "size_text": size(v["size"]), "created_text": when(v["created"])} for v in daemon_volumes()]
        context = {
            **self.admin_site.each_context(request),
            "title": "Daemon volumes",
            "rows": rows,
            "opts": self.model._meta,
            "total": size(sum(r["size"] or 0 for r in rows)),
        }
        return TemplateResponse(request, "admin/daemons/daemon/volumes.html", context)
