from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import NO_TOKEN, TokenAuthentication
from accounts.middleware import token_from_scope
from daemons.models import Daemon
from daemons.proxy import origin_url
from daemons.services import daemon_kill, daemon_list, daemon_spawn, parse_ports
from herder.errors import InvalidToken
from herder.files import files_from_request
from herder.schema import DAEMON_NAME_PARAMETER, TOKEN_REQUIRED, daemon_form, errors

_PROTOCOL_FIELDS = ("name", "image", "ports", "token")


class DaemonOutputSerializer(serializers.Serializer):
    Name = serializers.CharField(source="full_name")
    Address = serializers.SerializerMethodField()
    Ports = serializers.DictField(source="host_ports", child=serializers.IntegerField())
    ProxyURL = serializers.SerializerMethodField()
    # The daemon's own origin (HERDER_DAEMON_ORIGIN), null when off: where its
    # pages keep cookies and run as an origin of their own.
    URL = serializers.SerializerMethodField()
    # Not `name`: clients that match keys regardless of case (Go's encoding/json) would
    # read `Name` or `name` depending on their order. One spelling per meaning.
    ShortName = serializers.CharField(source="name")
    image = serializers.CharField()
    state = serializers.CharField()
    started = serializers.DateTimeField(allow_null=True)
    credits_used = serializers.IntegerField()

    def get_Address(self, daemon: Daemon) -> str:
        return settings.HERDER_DAEMON_ADDRESS

    def get_ProxyURL(self, daemon: Daemon) -> str:
        return f"/daemon/v1/proxy/{daemon.full_name}/"

    def get_URL(self, daemon: Daemon) -> str | None:
        return origin_url(daemon.host_label)


class _TokenView(APIView):
    authentication_classes = [TokenAuthentication]


class DaemonSpawnView(_TokenView):
    """Start a daemon, or restart it when the account has one of that name."""

    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        operation_id="daemon_spawn",
        auth=TOKEN_REQUIRED,
        request={
            "multipart/form-data": daemon_form(binary=True),
            "application/x-www-form-urlencoded": daemon_form(binary=False),
        },
        responses={
            200: DaemonOutputSerializer,
            **errors(
                400,
                401,
                402,
                405,
                409,
                413,
                415,
                429,
                503,
                _400="A bad name, image (`image_not_allowed`), ports (`bad_ports`) or file name (`bad_file_name`).",
                _409="Another spawn or kill of that daemon is in progress (`daemon_busy`).",
                _429="Too many large bodies in progress from this client or in all; see Retry-After.",
            ),
        },
    )
    def post(self, request):
        files = files_from_request(request, protocol_fields=_PROTOCOL_FIELDS)
        fields = request.POST
        daemon = daemon_spawn(
            account=request.user,
            jti=request.auth.jti,
            name=fields.get("name", ""),
            image=fields.get("image", ""),
            ports=parse_ports(fields.get("ports")),
            files=files,
        )
        return Response(DaemonOutputSerializer(daemon).data)


class DaemonListView(_TokenView):
    @extend_schema(
        operation_id="daemon_list",
        auth=TOKEN_REQUIRED,
        responses={200: DaemonOutputSerializer(many=True), **errors(401, 405)},
    )
    def get(self, request):
        return Response(DaemonOutputSerializer(daemon_list(account=request.user), many=True).data)


_KILL = dict(
    auth=TOKEN_REQUIRED,
    parameters=[
        DAEMON_NAME_PARAMETER,
        OpenApiParameter(
            "wipe",
            OpenApiTypes.STR,
            description="1, true or yes: remove its volume too (its files); anything else keeps it.",
        ),
    ],
    request=None,
    responses={
        200: DaemonOutputSerializer,
        **errors(
            400,
            401,
            404,
            405,
            409,
            503,
            _404="The account has no daemon of that name (`not_found`).",
            _409="A spawn of that daemon is in progress (`daemon_busy`).",
        ),
    },
)


class DaemonKillView(_TokenView):
    """Stop and remove the daemon's container, charging it up to now."""

    @extend_schema(operation_id="daemon_kill", **_KILL)
    def get(self, request, name: str):
        wipe = (request.query_params.get("wipe") or request.POST.get("wipe") or "").lower() in ("1", "true", "yes")
        return Response(DaemonOutputSerializer(daemon_kill(account=request.user, name=name, wipe=wipe)).data)

    @extend_schema(operation_id="daemon_kill_post", **_KILL)
    def post(self, request, name: str):
        return self.get(request, name)


def daemon_spawn_door(scope: dict) -> InvalidToken | None:
    """DaemonSpawnView's 401 for a request with no token at all, answered
    at the door (herder/door.py) before its body is read."""
    return None if token_from_scope(scope) else InvalidToken(NO_TOKEN)
