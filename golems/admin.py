from django.contrib import admin, messages

from golems.models import Golem, GolemPresence
from golems.services import golem_kill, golem_reset
from herder.errors import GolemNotFound, RuntimeUnavailable


@admin.register(Golem)
class GolemAdmin(admin.ModelAdmin):
    """Golems for audit, with reset and kill; the rows themselves are read-only."""

    list_display = ("webstrate", "state", "container_name", "started", "last_active", "restarts",
                    "crash_streak", "error")
    list_filter = ("state", "started", "last_active")
    search_fields = ("webstrate", "container_id", "container_name", "error")
    actions = ["reset_golems", "kill_golems"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # Deleting the row would leave its container running unseen: kill instead.
        return False

    def has_operate_permission(self, request) -> bool:
        # Resetting and killing change what runs: not for view-only staff.
        return request.user.has_perm("golems.change_golem")

    def _each(self, request, queryset, service, verb: str) -> None:
        done = 0
        for golem in queryset:
            try:
                service(webstrate=golem.webstrate)
                done += 1
            except (GolemNotFound, RuntimeUnavailable) as exc:
                self.message_user(request, f"{golem.webstrate}: {exc.detail}", messages.WARNING)
        if done:
            self.message_user(request, f"{verb} {done} golem(s).", messages.SUCCESS)

    @admin.action(description="Reset the selected golems (fresh browser)", permissions=["operate"])
    def reset_golems(self, request, queryset) -> None:
        self._each(request, queryset, golem_reset, "Reset")

    @admin.action(description="Kill the selected golems", permissions=["operate"])
    def kill_golems(self, request, queryset) -> None:
        self._each(request, queryset, golem_kill, "Killed")


@admin.register(GolemPresence)
class GolemPresenceAdmin(admin.ModelAdmin):
    """Which process holds each webstrate's golem control socket."""

    list_display = ("webstrate", "channel", "proven", "connected", "seen")
    list_filter = ("proven",)
    search_fields = ("webstrate", "channel")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # The row is the live socket's claim on its webstrate; it expires by itself.
        return False
