from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import TokenAuthentication
from daemons.models import Daemon
from daemons.proxy import origin_url
from daemons.services import daemon_kill, daemon_list, daemon_spawn, parse_ports
from herder.files import files_from_request

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

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField()
        image = serializers.CharField()
        ports = serializers.CharField(required=False, help_text='A JSON list: [8080] or ["80", "443"].')

    @extend_schema(
        operation_id="daemon_spawn",
        request={"multipart/form-data": InputSerializer, "application/x-www-form-urlencoded": InputSerializer},
        responses={200: DaemonOutputSerializer, 400: OpenApiResponse(description="Bad name, image or ports."),
                   401: OpenApiResponse(description="No valid token."),
                   402: OpenApiResponse(description="No credits left."),
                   409: OpenApiResponse(description="Another spawn of that daemon is in progress (daemon_busy).")},
    )
    def post(self, request):
        files = files_from_request(request, protocol_fields=_PROTOCOL_FIELDS)
        fields = request.POST
        daemon = daemon_spawn(
            account=request.user, jti=request.auth.jti,
            name=fields.get("name", ""), image=fields.get("image", ""),
            ports=parse_ports(fields.get("ports")), files=files,
        )
        return Response(DaemonOutputSerializer(daemon).data)


class DaemonListView(_TokenView):
    @extend_schema(operation_id="daemon_list", responses={200: DaemonOutputSerializer(many=True)})
    def get(self, request):
        return Response(DaemonOutputSerializer(daemon_list(account=request.user), many=True).data)


class DaemonKillView(_TokenView):
    @extend_schema(operation_id="daemon_kill", responses={200: DaemonOutputSerializer,
                                                           404: OpenApiResponse(description="No such daemon.")})
    def get(self, request, name: str):
        wipe = (request.query_params.get("wipe") or request.POST.get("wipe") or "").lower() in ("1", "true", "yes")
        return Response(DaemonOutputSerializer(daemon_kill(account=request.user, name=name, wipe=wipe)).data)

    @extend_schema(operation_id="daemon_kill_post", responses={200: DaemonOutputSerializer})
    def post(self, request, name: str):
        return self.get(request, name)
