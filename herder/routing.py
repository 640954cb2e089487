"""WebSocket routes; the apps add their consumers here."""

from django.urls import path

from daemons.consumers import DaemonAttachConsumer
from golems.routing import websocket_urlpatterns as golem_websocket_urlpatterns

websocket_urlpatterns: list = [
    path("daemon/v1/attach/<str:name>", DaemonAttachConsumer.as_asgi()),
    *golem_websocket_urlpatterns,
]
