import logging

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.http import HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.views import APIView

from accounts.middleware import token_from_scope
from accounts.services import token_authenticate
from herder.admission import client_address, client_of, request_scope
from herder.errors import BadInput, ClientGone, InvalidToken, TooManyRequests, api_error_response
from herder.files import files_from_request
from herder.gate import ADMIT_MS, WATCHED_BODY
from herder.schema import errors, minion_form
from minions.output import output_file_headers
from minions.runner import Cancelled
from minions.services import minion_run_admitted, minion_slots

logger = logging.getLogger(__name__)

_PROTOCOL_FIELDS = ("env", "output")
_FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")
# Where herder/gate.py leaves the slot it waited for.
TICKET = "herder.minion_ticket"


_ANSWER = (
    "The run's result as JSON; or, when `output` names a file the run made, that file's bytes "
    "(`Content-Security-Policy: sandbox`; types a browser only shows inline, every other as an "
    "attachment: minions/output.py)."
)


class MinionSpawnView(APIView):
    """Run code in a short-lived sandboxed container and answer its output."""

    parser_classes = [MultiPartParser, FormParser]

    class OutputSerializer(serializers.Serializer):
        StdOut = serializers.CharField()
        StdErr = serializers.CharField()
        ExitCode = serializers.IntegerField(allow_null=True, help_text="null when timed out.")
        TimedOut = serializers.BooleanField()
        Truncated = serializers.BooleanField(help_text="Output past a cap was cut.")
        DurationMs = serializers.IntegerField()

        class Meta:
            ref_name = "MinionResult"

    @extend_schema(
        operation_id="minion_spawn",
        request={
            "multipart/form-data": minion_form(binary=True),
            "application/x-www-form-urlencoded": minion_form(binary=False),
        },
        # A token is optional: with a valid one the client is its account.
        auth=[{"token": []}, {"tokenQuery": []}, {}],
        responses={
            (200, "application/json"): OpenApiResponse(OutputSerializer, description=_ANSWER),
            (200, "*/*"): OpenApiResponse(OpenApiTypes.BINARY, description=_ANSWER),
            **errors(
                400,
                405,
                413,
                415,
                429,
                503,
                _400="Unknown env (`unknown_env`), a bad file name (`bad_file_name`) or an unreadable form.",
                _413="Too many files or bytes (`payload_too_large`), refused while the body streams.",
                _429="The client, its account or the herder runs as many minions as it may, and the "
                "queue is full or the wait was too long (`too_many_requests`); see Retry-After.",
                _503="The container engine is unavailable, or the env's image is missing.",
            ),
        },
    )
    def post(self, request):
        """Documents the route; `minion_spawn` below serves it (async)."""
        raise NotImplementedError

    def answer(self, result, output):
        if output and result.outcome.output is not None:
            # Never a document of the herder's origin (minions/output.py).
            headers = output_file_headers(output)
            return HttpResponse(result.outcome.output, content_type=headers.pop("Content-Type"), headers=headers)
        # As DRF's JSONRenderer wrote it before this view turned async.
        return JsonResponse(
            self.OutputSerializer(result.as_json()).data,
            json_dumps_params={"separators": (",", ":"), "ensure_ascii": False},
        )


def server_timing(parts: dict[str, float]) -> str:
    """Where the answer's time went (ms), for the client and the benchmarks: the
    wait for a slot, recording the run, taking a container, the exchange with
    the runner, the hops to the run's thread and back."""
    return ", ".join(f"{name};dur={ms:.1f}" for name, ms in parts.items())


def _read(request):
    """The form: files, env, output. In the request's thread: parsing blocks."""
    content_type = request.content_type or ""
    if int(request.META.get("CONTENT_LENGTH") or 0) and content_type not in _FORMS:
        raise exceptions.UnsupportedMediaType(content_type)
    try:
        files = files_from_request(request, protocol_fields=_PROTOCOL_FIELDS)
    except MultiPartParserError as exc:
        raise BadInput(f"The form cannot be read: {exc}") from None
    return files, request.POST.get("env", ""), request.POST.get("output") or None


def _account_of(scope: dict):
    """The account of a valid token on the request, else None: minion spawn
    is public, so a bad token is ignored (the client is then its address)."""
    raw = token_from_scope(scope)
    if not raw:
        return None
    try:
        return token_authenticate(raw)[0]
    except InvalidToken:
        return None


def _client(scope: dict) -> str:
    return client_of({**scope, "account": _account_of(scope)})


@csrf_exempt
async def minion_spawn(request):
    """POST /minion/v1/spawn: parse, run on the slot herder/gate.py waited for
    (or wait here, when served without the gate), answer.

    A plain async view, not DRF (which is sync): Django cancels it when the
    client disconnects, and the run is then abandoned at once. Errors take
    the handler's shape (herder.errors.api_error_response).
    """
    if request.method != "POST":
        response = api_error_response(exceptions.MethodNotAllowed(request.method))
        response["Allow"] = "POST, OPTIONS"
        return response
    view = MinionSpawnView()
    try:
        declared = request.META.get("CONTENT_LENGTH")  # none when chunked: size unknown
        if declared and int(declared) <= WATCHED_BODY:
            # A form the gate read whole (most runs): parsed on the event loop in
            # well under a millisecond, no hop to the request's thread.
            files, env, output = _read(request)
        else:
            files, env, output = await sync_to_async(_read)(request)
        scope = request_scope(request)
        ticket = scope.get(TICKET)
        # Inside Django's request (which closes old connections itself): no
        # database_sync_to_async, whose closing would pull the connection from
        # under a test's transaction.
        client = ticket.client if ticket is not None else await sync_to_async(_client)(scope)
        try:
            result = await minion_run_admitted(
                client=client,
                ticket=ticket,
                env=env,
                files=files,
                output=output,
                client_addr=client_address(scope),
                origin=request.META.get("HTTP_REFERER") or request.META.get("HTTP_ORIGIN", ""),
            )
        except Cancelled as exc:
            raise ClientGone() from exc
        response = view.answer(result, output)
        response["Server-Timing"] = server_timing({"admit": scope.get(ADMIT_MS, 0.0), **result.timings})
        return response
    except Exception as exc:
        return api_error_response(exc)


async def minion_spawn_admit(scope: dict):
    """For herder/gate.py: wait for a minion slot before Django (no thread,
    no body held while waiting) or raise the 429. The view runs on the
    ticket left in the scope; the gate gives it back if the view did not."""
    client = client_of(scope)
    if token_from_scope(scope):
        try:
            client = await database_sync_to_async(_client)(scope)
        except Exception:  # the database is down: count by address, the view will answer
            logger.exception("minion spawn: the token could not be looked up")
    ticket = await minion_slots.ticket(client)
    scope[TICKET] = ticket
    return ticket.release_unless_taken


def minion_spawn_door(scope: dict) -> TooManyRequests | None:
    """minion_spawn_admit's refusal when it is sure at once (herder/door.py):
    a client by address with its runs and its queue full, or the queue full.
    A token holder's limit needs its account looked up: it goes on."""
    if token_from_scope(scope):
        return None
    return minion_slots.refusal_now(client_of(scope), may_wait=True)


# Let drf-spectacular find the view class behind the function.
minion_spawn.cls = MinionSpawnView
minion_spawn.initkwargs = {}
