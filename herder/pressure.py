"""GET /pressure: how loaded this herder process is, cheap enough to poll
every second (as browserless' /pressure): no Docker call, at most a small
database count.

Each section comes from a callable named in HERDER_PRESSURE_SOURCES
(section -> dotted path), so an app adds its own without herder/ importing
it; a source that fails shows its error rather than failing the whole answer.
"""

from __future__ import annotations

import logging
import time

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.utils.module_loading import import_string
from django.views.decorators.csrf import csrf_exempt

from herder.admission import recent_refusals, refusal_totals
from herder.errors import error_response

logger = logging.getLogger(__name__)

# How far back "refusals.recent" looks.
RECENT_SECONDS = 60


def pressure_snapshot() -> dict:
    answer: dict = {"time": time.time()}
    for section, path in settings.HERDER_PRESSURE_SOURCES.items():
        try:
            answer[section] = import_string(path)()
        except Exception as exc:  # one broken source must not hide the others
            logger.warning("pressure source %s failed: %s", section, exc)
            answer[section] = {"error": f"{type(exc).__name__}: {exc}"}
    answer["refusals"] = {
        "recent": recent_refusals(RECENT_SECONDS),
        "recent_seconds": RECENT_SECONDS,
        "total": dict(refusal_totals),
    }
    return answer


# Exempt: it takes no POST, and a POST is answered 405 rather than a CSRF 403.
@csrf_exempt
def pressure(request: HttpRequest) -> JsonResponse:
    """GET /pressure: running and queued work, limits, recent refusals by reason."""
    if request.method not in ("GET", "HEAD"):
        response = error_response(405, "method_not_allowed", f'Method "{request.method}" not allowed.')
        response["Allow"] = "GET, HEAD"
        return response
    response = JsonResponse(pressure_snapshot())
    response["Cache-Control"] = "no-store"
    return response
