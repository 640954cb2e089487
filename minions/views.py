import asyncio
import contextvars
import threading

from asgiref.sync import sync_to_async
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from herder.errors import ClientGone
from minions.files import files_from_request
from minions.output import output_file_headers
from minions.runner import Cancelled
from minions.services import minion_run

_PROTOCOL_FIELDS = ("env", "output")
# Set by minion_spawn when the client disconnects mid-run.
_client_gone: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "client_gone", default=None
)


class MinionSpawnView(APIView):
    """Run code in a short-lived sandboxed container and answer its output."""

    parser_classes = [MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer):
        env = serializers.CharField(help_text="python, ruby, node, latex, or an env the operators added.")
        output = serializers.CharField(
            required=False, help_text="A file to answer instead of the JSON result."
        )
        files = serializers.DictField(
            child=serializers.CharField(), required=False,
            help_text="Every other field or upload is a file written into /minion, "
            "named by the field (sub-folders allowed).",
        )

    class OutputSerializer(serializers.Serializer):
        StdOut = serializers.CharField()
        StdErr = serializers.CharField()
        ExitCode = serializers.IntegerField(allow_null=True, help_text="null when timed out.")
        TimedOut = serializers.BooleanField()
        Truncated = serializers.BooleanField(help_text="Output past a cap was cut.")
        DurationMs = serializers.IntegerField()

    @extend_schema(
        operation_id="minion_spawn",
        request={"multipart/form-data": InputSerializer, "application/x-www-form-urlencoded": InputSerializer},
        responses={
            200: OpenApiResponse(OutputSerializer, description="The run's result, or the output file's bytes."),
            400: OpenApiResponse(description="Unknown env or a bad file name."),
            413: OpenApiResponse(description="Too many files or too many bytes."),
            503: OpenApiResponse(description="The container engine is unavailable."),
        },
    )
    def post(self, request):
        files = files_from_request(request, protocol_fields=_PROTOCOL_FIELDS)
        fields = request.POST
        output = fields.get("output") or None
        gone = _client_gone.get()
        try:
            result = minion_run(
                env=fields.get("env", ""),
                files=files,
                output=output,
                client_addr=request.META.get("REMOTE_ADDR", ""),
                origin=request.META.get("HTTP_REFERER") or request.META.get("HTTP_ORIGIN", ""),
                cancelled=gone.is_set if gone else (lambda: False),
            )
        except Cancelled as exc:
            raise ClientGone() from exc
        if output and result.outcome.output is not None:
            # Never a document of the herder's origin (minions/output.py).
            headers = output_file_headers(output)
            return HttpResponse(result.outcome.output, content_type=headers.pop("Content-Type"),
                                headers=headers)
        return Response(self.OutputSerializer(result.as_json()).data)


_spawn_view = MinionSpawnView.as_view()


async def minion_spawn(request):
    """MinionSpawnView under ASGI, told when the client disconnects.

    Django cancels an async view whose client went away; a sync view would run
    on to the time limit. The run itself stays in the request's own thread.
    """
    gone = threading.Event()
    _client_gone.set(gone)
    try:
        return await sync_to_async(_spawn_view)(request)
    except asyncio.CancelledError:
        gone.set()
        raise


# Let drf-spectacular find the view class behind the wrapper.
minion_spawn.cls = _spawn_view.cls
minion_spawn.initkwargs = _spawn_view.initkwargs
minion_spawn.csrf_exempt = True
