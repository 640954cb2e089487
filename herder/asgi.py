import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herder.settings")
# Django must be set up before the consumers' modules are imported. Static
# files (the admin's, the API docs') come straight from the installed apps.
django_application = ASGIStaticFilesHandler(get_asgi_application())

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.middleware import TokenAuthMiddleware, token_refusal  # noqa: E402
from accounts.views import token_generate_admit, token_generate_door  # noqa: E402
from daemons.proxy import PrefixRouter  # noqa: E402
from daemons.proxy import route_of as daemon_route  # noqa: E402
from daemons.views import daemon_spawn_door  # noqa: E402
from golems.pairing import minion_process  # noqa: E402
from herder.bodycap import BodyCap  # noqa: E402
from herder.door import Door  # noqa: E402
from herder.gate import Gate  # noqa: E402
from herder.handoff import Handoff  # noqa: E402
from herder.rawinput import RawInputGuard, bad_length  # noqa: E402
from herder.requestlog import RequestLog  # noqa: E402
from herder.routing import websocket_urlpatterns  # noqa: E402
from herder.wslimits import WebSocketLimits, door_refusal  # noqa: E402
from minions.views import minion_spawn_admit, minion_spawn_door  # noqa: E402

# Read top to bottom, the layers a request meets.
# Both protocols first: the request id (answered as X-Request-Id), one log line
# and the metrics of every request and socket (herder/requestlog.py).
# HTTP: malformed framing (Content-Length, raw query bytes) is a 400; a daemon's
# origin (any path) and the path route go to the proxy, which streams bodies
# both ways; the herder's own routes meet admission (429 at once, or a wait for
# a slot with no thread held), then the body cap (413 while the body streams),
# then Django (a large body to a route that needs a token is read only with a
# valid one).
http = RawInputGuard(
    PrefixRouter(
        Gate(
            BodyCap(django_application, token_routes=frozenset({"/daemon/v1/spawn"}), token_refusal=token_refusal),
            routes={
                "/minion/v1/spawn": minion_spawn_admit,
                "/token/v1/generate": token_generate_admit,
            },
        ),
    ),
)
# WebSocket: sockets per client and in total and the frame cap (the proxy's
# sockets too); scope["account"] and scope["token"] from ?token= or a Bearer
# header; the daemon proxy; the herder's own consumers.
websocket = WebSocketLimits(TokenAuthMiddleware(PrefixRouter(URLRouter(websocket_urlpatterns))))

application = RequestLog(ProtocolTypeRouter({"http": http, "websocket": websocket}))

# The refusals the server can write itself, before any of the above runs
# (herder/door.py): the same judges as the Gate's admits and WebSocketLimits,
# and daemon spawn's 401 for a request with no token, for the requests that
# would reach them.
door = Door(
    http={
        "/minion/v1/spawn": minion_spawn_door,
        "/token/v1/generate": token_generate_door,
        "/daemon/v1/spawn": daemon_spawn_door,
    },
    websocket=door_refusal,
    reaches=lambda scope: not bad_length(scope) and daemon_route(scope) is None,
)

# A golem's socket to an ad-hoc minion held by another process of this host is
# passed to that process before its handshake (herder/handoff.py), so the pair
# relays within one process. Only with the Redis layer and its links between
# processes (the in-memory layer serves one process).
handoff = Handoff.for_layer(minion_process)
