import json
from pathlib import Path

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from golems.models import Golem
from golems.services import golem_kill, golem_list, golem_reset, golem_spawn
from herder.admission import client_of_request
from herder.errors import error_response
from herder.schema import WEBSTRATE_PARAMETER, errors

_BOOTSTRAP = (Path(__file__).parent / "bootstrap.js").read_text()


def bootstrap_script() -> str:
    """The bootstrap script, naming the herder by HERDER_PUBLIC_URL (ws/wss to match)."""
    url = settings.HERDER_PUBLIC_URL
    ws = "wss" + url[len("https") :] if url.startswith("https:") else "ws" + url[len("http") :]
    config = json.dumps({"url": url, "ws": ws}).replace("</", "<\\/")
    return _BOOTSTRAP.replace("__CONFIG__", config).replace("__URL__", url)


# Exempt: it takes no POST, and a POST is answered 405 rather than a CSRF 403.
@csrf_exempt
def golem_bootstrap(request: HttpRequest) -> HttpResponse:
    """GET / and /golem/v1/: the script a webstrate includes."""
    if request.method not in ("GET", "HEAD"):
        # As the schema says: a script to fetch, nothing to post to.
        response = error_response(405, "method_not_allowed", f'Method "{request.method}" not allowed.')
        response["Allow"] = "GET, HEAD"
        return response
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

    def post(self, request, webstrate: str):
        return Response(GolemSerializer(self.act(webstrate)).data)


def _action(operation_id: str, text: str, **statuses: str) -> dict:
    """extend_schema's arguments for a golem action, answered alike to GET and POST."""
    answer = (
        f"As plain text (the original's answer): {text} As JSON, the golem, when the client "
        "accepts JSON (`Accept: application/json` or `?format=json`)."
    )
    return dict(
        operation_id=operation_id,
        parameters=[WEBSTRATE_PARAMETER],
        request=None,
        responses={
            (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description=answer),
            (200, "application/json"): OpenApiResponse(GolemSerializer, description=answer),
            **errors(
                400,
                405,
                503,
                *(int(status[1:]) for status in statuses),
                _400="Not a valid webstrate id (`bad_webstrate_id`).",
                **statuses,
            ),
        },
    )


_NO_GOLEM = "That webstrate has no golem (`golem_not_found`)."


class GolemSpawnView(_GolemActionView):
    """Start the webstrate's golem; a repeat changes nothing and answers the same."""

    _schema = _action(
        "golem_spawn",
        "the golem's container id.",
        _404="The webstrates server has no such webstrate (`webstrate_not_found`).",
        _429="Too many golems, in total or new ones from this client; see Retry-After.",
        _503="The container engine or the webstrates server (`webstrates_unavailable`) does not answer.",
    )

    @extend_schema(**_schema)
    def get(self, request, webstrate: str):
        return super().get(request, webstrate)

    @extend_schema(**{**_schema, "operation_id": "golem_spawn_post"})
    def post(self, request, webstrate: str):
        return super().post(request, webstrate)

    def act(self, webstrate: str) -> Golem:
        # GET stays (the original's bootstrap script spawns from any page); the
        # client's rate and the total bound what cross-site requests can start.
        return golem_spawn(webstrate=webstrate, client=client_of_request(self.request))


class GolemResetView(_GolemActionView):
    """Restart the webstrate's golem in a fresh browser."""

    _schema = _action(
        "golem_reset",
        "the new container's id.",
        _404=_NO_GOLEM,
        _429="Too many new golems or resets from this client; see Retry-After.",
    )

    @extend_schema(**_schema)
    def get(self, request, webstrate: str):
        return super().get(request, webstrate)

    @extend_schema(**{**_schema, "operation_id": "golem_reset_post"})
    def post(self, request, webstrate: str):
        return super().post(request, webstrate)

    def act(self, webstrate: str) -> Golem:
        # Any page can ask too (GET): each reset is a fresh Chromium, rated as a spawn.
        return golem_reset(webstrate=webstrate, client=client_of_request(self.request))


class GolemKillView(_GolemActionView):
    """Stop and remove the webstrate's golem."""

    _schema = _action("golem_kill", "`ok`.", _404=_NO_GOLEM)

    @extend_schema(**_schema)
    def get(self, request, webstrate: str):
        return super().get(request, webstrate)

    @extend_schema(**{**_schema, "operation_id": "golem_kill_post"})
    def post(self, request, webstrate: str):
        return super().post(request, webstrate)

    def as_text(self, data) -> str:
        return "ok"

    def act(self, webstrate: str) -> Golem:
        return golem_kill(webstrate=webstrate)


class GolemListView(APIView):
    """The golems the herder keeps running, as JSON."""

    renderer_classes = [JSONRenderer]

    @extend_schema(operation_id="golem_list", responses={200: GolemSerializer(many=True), **errors(405)})
    def get(self, request):
        return Response(GolemSerializer(golem_list(), many=True).data)
