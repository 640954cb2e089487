from django.contrib import admin, messages

from daemons.models import Daemon
from daemons.services import daemon_delete, daemon_stop


@admin.register(Daemon)
class DaemonAdmin(admin.ModelAdmin):
    list_display = ("full_name", "owner", "image", "state", "started", "stopped", "credits_used")
    list_filter = ("state", "image", "started")
    search_fields = ("name", "full_name", "owner__email", "image", "container_id")
    date_hierarchy = "created"
    readonly_fields = [field.name for field in Daemon._meta.fields]
    actions = ["stop_daemons"]

    def has_add_permission(self, request) -> bool:
        return False

    # Deleting goes through the services: the container, its network and its
    # volume go with the row (charged to this moment), never left running unowned.
    def delete_model(self, request, obj) -> None:
        daemon_delete(obj)

    def delete_queryset(self, request, queryset) -> None:
        for daemon in queryset:
            daemon_delete(daemon)

    @admin.action(description="Stop the selected daemons (volumes kept)", permissions=["change"])
    def stop_daemons(self, request, queryset) -> None:
        stopped = 0
        for daemon in queryset:
            if daemon.is_running:
                daemon_stop(daemon, state=Daemon.State.KILLED)
                stopped += 1
        self.message_user(request, f"Stopped {stopped} daemons.", messages.SUCCESS)
