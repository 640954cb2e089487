from django.urls import path

from golems.consumers import GolemControlConsumer, GolemMinionConsumer, MinionPairConsumer

websocket_urlpatterns = [
    path("golem/v1/connect/<str:webstrate>", GolemControlConsumer.as_asgi()),
    path("golem/v1/connect-to/<str:webstrate>/<str:minion>", GolemMinionConsumer.as_asgi()),
    path("minion/v1/connect/<str:webstrate>", MinionPairConsumer.as_asgi()),
]
