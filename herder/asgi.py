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
from herder.routing import websocket_urlpatterns  # noqa: E402

# The daemon proxy comes first: a daemon's origin (any path, HTTP and WebSocket)
# and the path route never reach Django; it streams bodies both ways.
application = PrefixRouter(ProtocolTypeRouter(
    {
        "http": django_application,
        # Sets scope["account"] and scope["token"] from ?token= or a Bearer header.
        "websocket": TokenAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
))
