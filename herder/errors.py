"""API errors and the one handler that renders every error as one JSON shape.

Every error leaves the herder as `{"code": "<short_code>", "detail": "<sentence>"}`
with its status. Raise these rather than returning error responses, so the
handler renders them and the request's transaction rolls back.
"""

import logging

from django.core.exceptions import (
    PermissionDenied as DjangoPermissionDenied,
)
from django.core.exceptions import (
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

logger = logging.getLogger(__name__)


class BadInput(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "The request is not valid."
    default_code = "bad_input"


class UnknownEnv(BadInput):
    default_detail = "Unknown env."
    default_code = "unknown_env"


class BadFileName(BadInput):
    default_detail = "A file name is not allowed."
    default_code = "bad_file_name"


class ImageNotAllowed(BadInput):
    default_detail = "That image may not run here."
    default_code = "image_not_allowed"


class BadWebstrateId(BadInput):
    default_detail = "A webstrate id is 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit."
    default_code = "bad_webstrate_id"


class GolemNotFound(exceptions.NotFound):
    default_detail = "That webstrate has no golem."
    default_code = "golem_not_found"


class WebstrateNotFound(exceptions.NotFound):
    default_detail = "The webstrates server has no such webstrate (or does not let it be read)."
    default_code = "webstrate_not_found"


class WebstratesUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The webstrates server does not answer; try again later."
    default_code = "webstrates_unavailable"


class GolemConnected(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "A golem is already connected to that webstrate."
    default_code = "golem_connected"


class GolemProofRequired(exceptions.PermissionDenied):
    default_detail = "Only the webstrate's golem may open its control socket."
    default_code = "golem_proof_required"


class DaemonBusy(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "Another spawn or kill of that daemon is in progress; try again."
    default_code = "daemon_busy"


class InsufficientCredits(exceptions.APIException):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    default_detail = "Not enough credits."
    default_code = "insufficient_credits"


class InvalidToken(exceptions.AuthenticationFailed):
    # An AuthenticationFailed, so DRF adds the WWW-Authenticate header.
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "A valid token is required."
    default_code = "invalid_token"


class WrongPassword(exceptions.APIException):
    status_code = status.HTTP_401_UNAUTHORIZED
    default_detail = "Wrong token password."
    default_code = "wrong_password"


class TokenGenerationOff(exceptions.APIException):
    status_code = status.HTTP_405_METHOD_NOT_ALLOWED
    default_detail = "Token generation over HTTP is off: no token password is configured."
    default_code = "token_generation_off"


class AlreadyGranted(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "This token's credits were already granted."
    default_code = "already_granted"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request is too large."
    default_code = "payload_too_large"


class TooManyRequests(exceptions.APIException):
    """Refused for load; `wait` becomes the Retry-After header (seconds)."""

    status_code = status.HTTP_429_TOO_MANY_REQUESTS
    default_detail = "Too many requests; try again later."
    default_code = "too_many_requests"

    def __init__(self, detail: str | None = None, *, wait: float = 1) -> None:
        super().__init__(detail)
        self.wait = max(1, int(wait + 0.999))


class ClientGone(exceptions.APIException):
    # nginx's "client closed request": nobody is left to read it.
    status_code = 499
    default_detail = "The client went away before the run finished."
    default_code = "client_gone"


class RuntimeUnavailable(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The container engine is unavailable; try again later."
    default_code = "runtime_unavailable"


class ImageMissing(RuntimeUnavailable):
    default_detail = "An image the herder needs is not present."
    default_code = "image_missing"


def _sentence(detail) -> str:
    """Flatten DRF's nested validation details into one readable sentence."""
    if isinstance(detail, dict):
        parts = []
        for field, value in detail.items():
            text = _sentence(value)
            parts.append(text if field == "non_field_errors" else f"{field}: {text}")
        return " ".join(parts)
    if isinstance(detail, list):
        return " ".join(_sentence(item) for item in detail)
    return str(detail)


def _code(exc: exceptions.APIException) -> str:
    if isinstance(exc, exceptions.ValidationError):
        return "bad_input"
    codes = exc.get_codes()
    return codes if isinstance(codes, str) else exc.default_code


def _translate(exc: Exception) -> Exception:
    """Map Django's own exceptions onto API errors."""
    if isinstance(exc, Http404):
        return exceptions.NotFound()
    if isinstance(exc, DjangoPermissionDenied):
        return exceptions.PermissionDenied()
    if isinstance(exc, (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent)):
        return PayloadTooLarge(str(exc) or None)
    return exc


def exception_handler(exc: Exception, context: dict) -> Response:
    """DRF's EXCEPTION_HANDLER: every error in that shape; unknown ones a logged 500."""
    exc = _translate(exc)
    if not isinstance(exc, exceptions.APIException):
        logger.exception("unhandled error in %s", context.get("view"), exc_info=exc)
        return Response(
            {"code": "server_error", "detail": "The herder failed; the error is logged."},
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if getattr(exc, "wait", None):
        headers["Retry-After"] = str(int(exc.wait))
    return Response(
        {"code": _code(exc), "detail": _sentence(exc.detail)},
        status=exc.status_code,
        headers=headers,
    )


def api_error_response(exc: Exception) -> JsonResponse:
    """What the handler answers for `exc`, from a plain Django view (an async
    one: DRF's views are sync), headers (Retry-After...) included."""
    response = exception_handler(exc, {"view": None})
    answer = JsonResponse(
        response.data, status=response.status_code, json_dumps_params={"separators": (",", ":"), "ensure_ascii": False}
    )
    for name, value in response.headers.items():
        if name.lower() != "content-type":
            answer[name] = value
    return answer


def error_response(status_code: int, code: str, detail: str) -> JsonResponse:
    """The same shape for the few answers made outside DRF (handler404, handler500)."""
    return JsonResponse({"code": code, "detail": detail}, status=status_code)


def not_found(request, exception=None) -> JsonResponse:
    return error_response(404, "not_found", "No such route.")


def server_error(request) -> JsonResponse:
    return error_response(500, "server_error", "The herder failed; the error is logged.")


def bad_request(request, exception=None) -> JsonResponse:
    return error_response(400, "bad_input", "The request is not valid.")


def csrf_failure(request, reason: str = "") -> JsonResponse:
    # API routes are exempt; this answers form posts to Django's own pages.
    return error_response(403, "csrf_failed", f"CSRF check failed: {(reason or 'no valid token').rstrip('.')}.")


class JSONErrorsMixin:
    """For a DRF view whose renderers are not JSON (plain text, YAML): its
    errors are rendered as JSON all the same."""

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if response.status_code >= 400:
            response.accepted_renderer = JSONRenderer()
            response.accepted_media_type = "application/json"
        return response
