import json
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from golems.models import Golem
from golems.services import golem_kill, golem_list, golem_reset, golem_spawn
from herder.admission import client_of_request

_BOOTSTRAP = (Path(__file__).parent / "bootstrap.js").read_text()


def bootstrap_script() -> str:
    """The bootstrap script, naming the herder by HERDER_PUBLIC_URL (ws/wss to match)."""
    url = settings.HERDER_PUBLIC_URL
    ws = "wss" + url[len("https"):] if url.startswith("https:") else "ws" + url[len("http"):]
    config = json.dumps({"url": url, "ws": ws}).replace("</", "<\\/")
    return _BOOTSTRAP.replace("__CONFIG__", config).replace("__URL__", url)


def golem_bootstrap(request: HttpRequest) -> HttpResponse:
    """GET / and /golem/v1/: the script a webstrate includes."""
    response = HttpResponse(bootstrap_script(), content_type="application/javascript; charset=utf-8")
    response["Cache-Control"] = "public, max-age=300"
    return response


class PlainTextRenderer(BaseRenderer):
    """The original herder's plain-text answers: what the view's `as_text` says."""

    media_type = "text/plain"
    format = "txt"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        view = (renderer_context or {}).get("view")
        text = view.as_text(data) if view is not None and hasattr(view, "as_text") else json.dumps(data)
        return (text + "\n").encode()


class GolemSerializer(serializers.ModelSerializer):
    class Meta:
        model = Golem
        fields = ["webstrate", "state", "container_id", "container_name", "started", "last_active", "restarts"]


class _GolemActionView(APIView):
    """Plain text unless the client accepts JSON; errors are JSON whatever it accepts."""

    renderer_classes = [PlainTextRenderer, JSONRenderer]
    # For the schema: the answer of GET and POST alike, and no request body.
    serializer_class = GolemSerializer

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code >= 400:
            response.accepted_renderer = JSONRenderer()
            response.accepted_media_type = "application/json"
        return response

    def as_text(self, data) -> str:
        return data.get("container_id", "")

    def act(self, webstrate: str) -> Golem:
        raise NotImplementedError

    def get(self, request, webstrate: str):
        return Response(GolemSerializer(self.act(webstrate)).data)

    @extend_schema(request=None)
    def post(self, request, webstrate: str):
        return Response(GolemSerializer(self.act(webstrate)).data)


_ACTION_RESPONSES = {
    200: OpenApiResponse(GolemSerializer, description="The golem; as text, its container id."),
    400: OpenApiResponse(description="Not a valid webstrate id."),
    503: OpenApiResponse(description="The container engine (or, spawning, the webstrates server) is unavailable."),
}


class GolemSpawnView(_GolemActionView):
    """Start the webstrate's golem; a repeat changes nothing and answers the same."""

    @extend_schema(operation_id="golem_spawn", responses={
        **_ACTION_RESPONSES,
        404: OpenApiResponse(description="The webstrates server has no such webstrate."),
        429: OpenApiResponse(description="Too many golems, in total or new ones from this client; "
                                         "Retry-After says when to try again."),
    })
    def get(self, request, webstrate: str):
        return super().get(request, webstrate)

    def act(self, webstrate: str) -> Golem:
        # GET stays (the original's bootstrap script spawns from any page); the
        # client's rate and the total bound what cross-site requests can start.
        return golem_spawn(webstrate=webstrate, client=client_of_request(self.request))


class GolemResetView(_GolemActionView):
    """Restart the webstrate's golem in a fresh browser."""

    @extend_schema(operation_id="golem_reset", responses={**_ACTION_RESPONSES, 404: OpenApiResponse(description="No golem.")})
    def get(self, request, webstrate: str):
        return super().get(request, webstrate)

    def act(self, webstrate: str) -> Golem:
        return golem_reset(webstrate=webstrate)


class GolemKillView(_GolemActionView):
    """Stop and remove the webstrate's golem."""

    @extend_schema(operation_id="golem_kill", responses={**_ACTION_RESPONSES, 404: OpenApiResponse(description="No golem.")})
    def get(self, request, webstrate: str):
        return super().get(request, webstrate)

    def as_text(self, data) -> str:
        return "ok"

    def act(self, webstrate: str) -> Golem:
        return golem_kill(webstrate=webstrate)


class GolemListView(APIView):
    """The golems the herder keeps running, as JSON."""

    renderer_classes = [JSONRenderer]

    @extend_schema(operation_id="golem_list", responses={200: GolemSerializer(many=True)})
    def get(self, request):
        return Response(GolemSerializer(golem_list(), many=True).data)
