import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herder.settings")
# Django must be set up before the consumers' modules are imported. Static
# files (the admin's, the API docs') come straight from the installed apps.
django_application = ASGIStaticFilesHandler(get_asgi_application())

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from accounts.middleware import TokenAuthMiddleware  # noqa: E402
from accounts.views import token_generate_admit  # noqa: E402
from daemons.proxy import PREFIX as DAEMON_PROXY_PREFIX  # noqa: E402
from daemons.proxy import PrefixRouter  # noqa: E402
from herder.bodycap import BodyCap  # noqa: E402
from herder.gate import Gate  # noqa: E402
from herder.routing import websocket_urlpatterns  # noqa: E402
from minions.views import minion_spawn_admit  # noqa: E402

# An HTTP request meets these in order, top to bottom.
http = Gate(                        # admission: 429 at once, or wait for a slot here;
    BodyCap(                        # bodies over the route's cap: 413 while they stream;
        PrefixRouter(               # the daemon proxy (skipped above: it streams bodies
            django_application,     # to the daemon), else Django.
        ),
        skip=(DAEMON_PROXY_PREFIX,),
    ),
    routes={
        "/minion/v1/spawn": minion_spawn_admit,
        "/token/v1/generate": token_generate_admit,
    },
)

application = ProtocolTypeRouter(
    {
        "http": http,
        # Sets scope["account"] and scope["token"] from ?token= or a Bearer header.
        "websocket": TokenAuthMiddleware(URLRouter(websocket_urlpatterns)),
    }
)
