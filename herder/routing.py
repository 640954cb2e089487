"""WebSocket routes; the apps add their consumers here."""

from channels.auth import AuthMiddlewareStack
from django.urls import path

from daemons.consumers import DaemonAttachConsumer, DaemonStaffAttachConsumer
from golems.routing import websocket_urlpatterns as golem_websocket_urlpatterns

websocket_urlpatterns: list = [
    path("daemon/v1/attach/<str:name>", DaemonAttachConsumer.as_asgi()),
    # The admin's console: the operator's session, not a token (daemons/console.py).
    path("admin/daemons/daemon/<int:pk>/attach", AuthMiddlewareStack(DaemonStaffAttachConsumer.as_asgi())),
    *golem_websocket_urlpatterns,
]
