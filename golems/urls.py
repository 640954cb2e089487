from django.urls import path

from golems.views import GolemKillView, GolemListView, GolemResetView, GolemSpawnView, golem_bootstrap

urlpatterns = [
    path("", golem_bootstrap, name="golem-bootstrap"),
    path("golem/v1/", golem_bootstrap, name="golem-bootstrap-v1"),
    path("golem/v1/ls", GolemListView.as_view(), name="golem-list"),
    path("golem/v1/spawn/<str:webstrate>", GolemSpawnView.as_view(), name="golem-spawn"),
    path("golem/v1/reset/<str:webstrate>", GolemResetView.as_view(), name="golem-reset"),
    path("golem/v1/kill/<str:webstrate>", GolemKillView.as_view(), name="golem-kill"),
]
