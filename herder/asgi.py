import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herder.settings")
# Django must be set up before the consumers' modules are imported. Static
# files (the admin's, the API docs') come straight from the installed apps.
django_application = ASGIStaticFilesHandler(get_asgi_application())

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.middleware import TokenAuthMiddleware  # noqa: E402
from daemons.proxy import PrefixRouter  # noqa: E402
from herder.rawinput import RawInputGuard  # noqa: E402
from herder.requestlog import RequestLog  # noqa: E402
from herder.routing import websocket_urlpatterns  # noqa: E402
from herder.wslimits import WebSocketLimits  # noqa: E402

# Outermost, for both protocols: the request id (answered as X-Request-Id), one
# log line and the metrics of every request and socket (herder/requestlog.py).
application = RequestLog(ProtocolTypeRouter(
    {
        # The daemon proxy streams bodies, so it bypasses Django's request handling.
        # Malformed framing (Content-Length, raw query bytes) is a JSON 400 before anything else.
        "http": RawInputGuard(PrefixRouter(django_application)),
        # Sockets per client and in total, and the frame cap, before anything else
        # (herder/wslimits.py); then scope["account"] and scope["token"] from
        # ?token= or a Bearer header.
        "websocket": WebSocketLimits(TokenAuthMiddleware(URLRouter(websocket_urlpatterns))),
    }
))
