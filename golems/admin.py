from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Case, IntegerField, Value, When
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.views.decorators.http import require_POST

from golems.models import Golem, GolemPresence
from golems.services import golem_kill, golem_reset
from herder.admin_display import log_action, when, yes_no
from herder.errors import GolemNotFound, RuntimeUnavailable


@admin.register(Golem)
class GolemAdmin(admin.ModelAdmin):
    """Golems for audit, with reset and kill; the rows themselves are read-only."""

    list_display = (
        "webstrate",
        "state",
        "container_name",
        "started_at",
        "last_active_at",
        "restarts",
        "crash_streak",
        "error",
    )
    list_filter = ("state", "started", "last_active")
    search_fields = ("webstrate", "container_id", "container_name", "error")
    actions = ["reset_golems", "kill_golems"]
    fields = (
        "webstrate",
        "state",
        "container_name",
        "container_id",
        "created_at",
        "started_at",
        "stopped_at",
        "last_active_at",
        "restarts",
        "crash_streak",
        "error",
        "generation",
    )
    readonly_fields = fields
    change_form_template = "admin/golems/golem/change_form.html"

    def get_ordering(self, request: HttpRequest) -> list:
        # The running golems first: the one running among forty killed ones is on top.
        running = Case(
            When(state__in=[Golem.State.RUNNING, Golem.State.STARTING], then=Value(0)),
            default=Value(1),
            output_field=IntegerField(),
        )
        return [running.asc(), "webstrate"]

    @admin.display(description="created", ordering="created")
    def created_at(self, golem: Golem) -> str:
        return when(golem.created)

    @admin.display(description="started", ordering="started")
    def started_at(self, golem: Golem) -> str:
        return when(golem.started)

    @admin.display(description="stopped", ordering="stopped")
    def stopped_at(self, golem: Golem) -> str:
        return when(golem.stopped)

    @admin.display(description="last active", ordering="last_active")
    def last_active_at(self, golem: Golem) -> str:
        return when(golem.last_active)

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
                log_action(request, golem, verb)
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

    def get_urls(self) -> list:
        view = self.admin_site.admin_view
        return [
            path("<int:pk>/reset/", view(require_POST(self.reset_view)), name="golems_golem_reset"),
            path("<int:pk>/kill/", view(require_POST(self.kill_view)), name="golems_golem_kill"),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra = {"can_operate": self.has_operate_permission(request), **(extra_context or {})}
        return super().change_view(request, object_id, form_url, extra_context=extra)

    def _one(self, request: HttpRequest, pk: int, service, verb: str) -> HttpResponse:
        if not self.has_operate_permission(request):
            raise PermissionDenied
        golem = get_object_or_404(Golem, pk=pk)
        self._each(request, Golem.objects.filter(pk=pk), service, verb)
        return HttpResponseRedirect(reverse("admin:golems_golem_change", args=[golem.pk]))

    def reset_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._one(request, pk, golem_reset, "Reset")

    def kill_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        return self._one(request, pk, golem_kill, "Killed")


@admin.register(GolemPresence)
class GolemPresenceAdmin(admin.ModelAdmin):
    """Which process holds each webstrate's golem control socket."""

    list_display = ("webstrate", "channel", "proven_", "connected_at", "seen_at")
    list_filter = ("proven",)

    @admin.display(description="proven", ordering="proven")
    def proven_(self, presence: GolemPresence) -> str:
        return yes_no(presence.proven)

    @admin.display(description="connected", ordering="connected")
    def connected_at(self, presence: GolemPresence) -> str:
        return when(presence.connected)

    @admin.display(description="seen", ordering="seen")
    def seen_at(self, presence: GolemPresence) -> str:
        return when(presence.seen)

    search_fields = ("webstrate", "channel")

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        # The row is the live socket's claim on its webstrate; it expires by itself.
        return False
