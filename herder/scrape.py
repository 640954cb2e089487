"""GET /metrics: Prometheus' text format, for those allowed to scrape.

Allowed: a request carrying `Authorization: Bearer <HERDER_METRICS_TOKEN>`
(when that is set), or one from an address in HERDER_METRICS_ALLOWED (default
loopback). Behind a proxy the address is the one a trusted proxy
(HERDER_TRUSTED_PROXIES) forwarded; a request that an untrusted proxy
forwarded (it carries forwarding headers) is never allowed by address: a
reverse proxy on the same host would otherwise make every stranger loopback.
Anything else is 403 in the herder's JSON error shape.
"""

from __future__ import annotations

import hmac
import ipaddress

from django.conf import settings
from django.http import HttpResponse
from django.views.decorators.csrf import csrf_exempt
from prometheus_client.exposition import choose_encoder

from herder import metrics
from herder.admission import _trusted, client_address
from herder.errors import error_response

_FORWARDING = ("HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP")


def _scope_of(request) -> dict:
    scope = getattr(request, "scope", None)
    if scope is not None:
        return scope
    # Under WSGI (Django's test client): the same from META.
    headers = []
    if "HTTP_X_FORWARDED_FOR" in request.META:
        headers.append((b"x-forwarded-for", request.META["HTTP_X_FORWARDED_FOR"].encode("latin-1")))
    return {"client": (request.META.get("REMOTE_ADDR") or "", 0), "headers": headers}


def _token_ok(request) -> bool:
    token = settings.HERDER_METRICS_TOKEN
    if not token:
        return False
    scheme, _, given = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _address_ok(request) -> bool:
    allowed = settings.HERDER_METRICS_ALLOWED
    if not allowed:
        return False
    scope = _scope_of(request)
    peer = (scope.get("client") or ("", 0))[0] or ""
    if not _trusted(peer) and any(request.META.get(name) for name in _FORWARDING):
        return False
    try:
        address = ipaddress.ip_address(client_address(scope))
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(network, strict=False) for network in allowed)


@csrf_exempt  # changes nothing; any other method is a JSON 405, not a CSRF 403
def metrics_view(request):
    if request.method not in ("GET", "HEAD"):
        return error_response(405, "method_not_allowed", f"Method {request.method} is not allowed here.")
    if not (_token_ok(request) or _address_ok(request)):
        return error_response(
            403, "forbidden", "Scraping the metrics needs HERDER_METRICS_TOKEN or an address in HERDER_METRICS_ALLOWED."
        )
    metrics.refresh_local()
    # Prometheus' text format, or OpenMetrics when the scraper asks for it.
    encode, content_type = choose_encoder(request.META.get("HTTP_ACCEPT", ""))
    return HttpResponse(encode(metrics.registry()), content_type=content_type)
