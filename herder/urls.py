from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.views import TokenGenerateView, TokenInspectView
from daemons.console import token_console
from daemons.views import DaemonKillView, DaemonListView, DaemonSpawnView
from herder.dashboard import dashboard
from herder.errors import JSONErrorsMixin
from herder.health import healthz, readyz
from herder.pressure import pressure
from herder.scrape import metrics_view
from herder.throttle import admin_login
from minions.views import minion_spawn


class SchemaView(JSONErrorsMixin, SpectacularAPIView):
    """The OpenAPI schema (YAML or JSON); a refused method answers JSON like every error."""


class DocsView(JSONErrorsMixin, SpectacularSwaggerView):
    """Swagger UI. Its HTML renderer cannot render OPTIONS metadata (a 500): GET only."""

    http_method_names = ["get", "head"]


urlpatterns = [
    path("minion/v1/spawn", minion_spawn, name="minion-spawn"),
    path("token/v1/generate", TokenGenerateView.as_view(), name="token-generate"),
    path("token/v1/inspect/<str:token>", TokenInspectView.as_view(), name="token-inspect"),
    path("daemon/v1/spawn", DaemonSpawnView.as_view(), name="daemon-spawn"),
    path("daemon/v1/ls", DaemonListView.as_view(), name="daemon-list"),
    path("daemon/v1/kill/<str:name>", DaemonKillView.as_view(), name="daemon-kill"),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", DocsView.as_view(url_name="schema"), name="docs"),
    # Before admin.site.urls: failed logins throttled (herder/throttle.py).
    path("admin/login/", admin_login, name="admin-login-throttled"),
    path("admin/dashboard/", admin.site.admin_view(dashboard), name="admin-dashboard"),
    path("admin/", admin.site.urls),
    path("daemon/v1/console/<str:name>", token_console, name="daemon-console"),
    path("pressure", pressure, name="pressure"),
    # Observability (herder/health.py, herder/scrape.py).
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    # The bootstrap script at "/", golem/v1/... (golems/urls.py).
    path("", include("golems.urls")),
]

handler400 = "herder.errors.bad_request"
handler404 = "herder.errors.not_found"
handler500 = "herder.errors.server_error"
