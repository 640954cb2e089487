"""The outermost ASGI layer: a request id, one log line and the metrics of
every HTTP request and WebSocket.

- The request id is the incoming `X-Request-Id` when a trusted proxy
  (HERDER_TRUSTED_PROXIES) sent it and it is short and safe, else a new one.
  It is answered as `X-Request-Id` on every answer (errors, 404s, refusals by
  inner layers, WebSocket handshakes), set in a context variable for the log
  lines logged inside the request (herder/logs.py), and left in
  scope["request_id"].
- One line per request when it ends: method, route, status, duration,
  client, request id. The route is the URL pattern's name, never the path:
  paths and queries carry tokens (`/token/v1/inspect/<token>`, `?token=`).
  Refusals for load (429) are the exception: one line per client and route
  every HERDER_LOG_REFUSALS_EVERY seconds, its `unlogged` field counting those
  left out before it (RefusalLines). A flood is thousands of them a second:
  a line each cost a fifth of a refusal's CPU and filled the operator's logs.
- herder_http_requests_total by route and code, herder_proxy_request_duration_seconds
  for the daemon proxy, herder_websockets by kind while a socket is open.
- The event loop's lag is sampled from a thread (`LoopLagProbe`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time

from django.conf import settings
from django.urls import Resolver404, resolve
from django.utils.deprecation import MiddlewareMixin

from herder import metrics
from herder.admission import client_address, from_trusted_proxy
from herder.logs import log_event, new_request_id, request_id, safe_request_id

logger = logging.getLogger("herder.request")

_PROXY_PREFIX = "/daemon/v1/proxy/"
# Scraped every few seconds by Prometheus and Kubernetes: a line only when they fail.
_QUIET_ROUTES = frozenset({"healthz", "readyz", "metrics"})
_WEBSOCKET_KINDS = (
    ("/golem/v1/connect-to/", "golem_minion"),
    ("/golem/v1/connect/", "golem_control"),
    ("/minion/v1/connect/", "minion"),
    ("/daemon/v1/attach/", "daemon_attach"),
    (_PROXY_PREFIX, "daemon_proxy"),
)


class RefusalLines:
    """Which 429s get a log line: the first per (client, route) in each
    window; the others are counted, and the count rides on the key's next
    line (`unlogged`). The metrics count every one. Keys are bounded: past
    `max_keys` within one window (a flood from many addresses), the new ones
    share one key per route."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._keys: dict[tuple[str, str], list] = {}  # key: [window start, unlogged]

    def take(self, client: str, route: str, now: float) -> int | None:
        """None: skip this line; else log it, with this many left out before it."""
        window = settings.HERDER_LOG_REFUSALS_EVERY
        key = (client, route)
        entry = self._keys.get(key)
        if entry is None and len(self._keys) >= self.max_keys:
            self._keys = {k: v for k, v in self._keys.items() if now - v[0] < window}
            if len(self._keys) >= self.max_keys:
                key = ("*", route)
                entry = self._keys.get(key)
        if entry is not None and now - entry[0] < window:
            entry[1] += 1
            return None
        self._keys[key] = [now, 0]
        return entry[1] if entry is not None else 0


refusal_lines = RefusalLines()


def _log_line(event: str, level: int, fields: dict) -> None:
    """log_event for the request log, which has checked the level already."""
    if fields["status"] == 429:
        unlogged = refusal_lines.take(fields["client"], fields.get("route") or fields["kind"], time.monotonic())
        if unlogged is None:
            return
        fields["unlogged"] = unlogged
    log_event(logger, event, level=level, **fields)


def _route_name(match) -> str:
    name = match.view_name or match.route or "unnamed"
    # The admin has a route per model and action: one value for all of them.
    return "admin" if name.startswith("admin:") or name.startswith("admin/") else name


def _is_proxied(scope: dict) -> bool:
    """The daemon proxy's: its path route, or any path on a daemon's origin."""
    from daemons.proxy import route_of as daemon_route  # the proxy knows its own routes

    return scope["path"].startswith(_PROXY_PREFIX) or daemon_route(scope) is not None


def route_of(scope: dict, found: list | None = None) -> str:
    """The URL pattern's name for the request (bounded: one value per route):
    what Django resolved for it (`found`, filled by RouteName), else the daemon
    proxy's, else resolved here (answers made before Django: refusals, 400s)."""
    if found:
        return found[0]
    path = scope["path"]
    if _is_proxied(scope):
        return "daemon-proxy"
    if path.startswith("/" + settings.STATIC_URL.lstrip("/")):
        return "static"
    try:
        return _route_name(resolve(path))
    except Resolver404:
        return "unmatched"
    except Exception:  # a path the resolver cannot even read
        return "unmatched"


class RouteName(MiddlewareMixin):
    """Django middleware: hands the route Django resolved to the ASGI layer
    (through a list the layer left in the scope), so it is not resolved twice.
    A coroutine: under ASGI Django awaits it on the loop (a plain method would
    cost a thread hop per request); under WSGI Django runs it with async_to_sync."""

    async def process_view(self, request, view_func, view_args, view_kwargs):
        found = getattr(request, "scope", {}).get("herder.route")
        if found is not None and request.resolver_match is not None and not found:
            found.append(_route_name(request.resolver_match))


def websocket_kind(scope: dict) -> str:
    path = scope["path"]
    for prefix, kind in _WEBSOCKET_KINDS:
        if path.startswith(prefix):
            return kind
    return "daemon_proxy" if _is_proxied(scope) else "other"


def _incoming_id(scope: dict) -> str | None:
    """From a trusted proxy (the caller has checked)."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            return safe_request_id(value.decode("latin-1"))
    return None


_SCHEMES = {"http": {b"http": "http", b"https": "https"}, "websocket": {b"http": "ws", b"https": "wss"}}


def _forwarded_scheme(scope: dict) -> str | None:
    """The scheme a trusted proxy says the client used (X-Forwarded-Proto): a
    TLS proxy in front makes the request https for Django (secure cookies, the
    admin's CSRF origin check). Never from anyone else (the servers' own
    handling of it is off: herder/servers.py). The caller has checked the proxy."""
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-proto":
            return _SCHEMES[scope["type"]].get(value.split(b",")[-1].strip().lower())
    return None


def _with_id(headers, rid: bytes) -> list:
    return [(k, v) for k, v in (headers or ()) if k.lower() != b"x-request-id"] + [(b"x-request-id", rid)]


class RequestLog:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        probe.watch(asyncio.get_running_loop())
        if metrics._relayed:
            metrics.flush_relayed()  # a scrape sees every frame relayed so far
        proxied = from_trusted_proxy(scope)
        rid = (proxied and _incoming_id(scope)) or new_request_id()
        scheme = _forwarded_scheme(scope) if proxied else None
        if scheme is not None:
            scope = {**scope, "scheme": scheme}
        token = request_id.set(rid)
        try:
            if scope["type"] == "http":
                await self._http({**scope, "request_id": rid, "herder.route": []}, receive, send, rid)
            else:
                await self._websocket({**scope, "request_id": rid}, receive, send, rid)
        finally:
            request_id.reset(token)

    async def _http(self, scope, receive, send, rid: str) -> None:
        started = time.perf_counter()
        status = 0
        raw_id = rid.encode()

        async def answer(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": _with_id(message.get("headers"), raw_id)}
            await send(message)

        try:
            await self.app(scope, receive, answer)
        except Exception:
            logger.exception("unhandled error in %s %s", scope.get("method"), route_of(scope, scope["herder.route"]))
            if status == 0:
                status = 500
                body = json.dumps({"code": "server_error", "detail": "A server error occurred."}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": _with_id(
                            [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                            raw_id,
                        ),
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            duration = time.perf_counter() - started
            route = route_of(scope, scope["herder.route"])
            # 499: the client left before any answer (nginx's convention).
            code = status or 499
            metrics.http_requests.labels(route, str(code)).inc()
            if route == "daemon-proxy":
                metrics.proxy_request_duration.observe(duration)
            level = (
                logging.WARNING
                if code >= 500
                else logging.DEBUG
                if route in _QUIET_ROUTES and code < 400
                else logging.INFO
            )
            if logger.isEnabledFor(level):
                _log_line(
                    "http.request",
                    level,
                    {
                        "method": scope.get("method"),
                        "route": route,
                        "status": code,
                        "duration_ms": round(duration * 1000, 2),
                        "client": client_address(scope),
                    },
                )

    async def _websocket(self, scope, receive, send, rid: str) -> None:
        started = time.perf_counter()
        kind = websocket_kind(scope)
        status = 0
        close_code = None
        accepted = False
        raw_id = rid.encode()
        gauge = metrics.websockets.labels(kind)

        async def answer(message):
            nonlocal status, close_code, accepted
            kind_ = message["type"]
            if kind_ == "websocket.accept":
                message = {**message, "headers": _with_id(message.get("headers"), raw_id)}
                if not accepted:
                    accepted, status = True, 101
                    gauge.inc()
            elif kind_ == "websocket.http.response.start":
                status = message["status"]
                message = {**message, "headers": _with_id(message.get("headers"), raw_id)}
            elif kind_ == "websocket.close":
                close_code = message.get("code", 1000)
                if not accepted and not status:
                    status = 403  # closed during the handshake: the server answers 403
            await send(message)

        try:
            await self.app(scope, receive, answer)
        finally:
            if accepted:
                gauge.dec()
            duration = time.perf_counter() - started
            if logger.isEnabledFor(logging.INFO):
                _log_line(
                    "websocket",
                    logging.INFO,
                    {
                        "kind": kind,
                        "status": status or 499,
                        "close_code": close_code,
                        "duration_ms": round(duration * 1000, 2),
                        "client": client_address(scope),
                    },
                )


def refused_at_door(scope: dict, started: float, status: int) -> str:
    """What RequestLog does for a refusal the server answered itself
    (herder/door.py): the request id (returned, to be answered), the metrics
    and the log line."""
    rid = (from_trusted_proxy(scope) and _incoming_id(scope)) or new_request_id()
    if scope["type"] == "http":
        route = _door_route(scope["path"])
        metrics.http_requests.labels(route, str(status)).inc()
        event, fields = "http.request", {"method": scope["method"], "route": route}
    else:
        event, fields = "websocket", {"kind": websocket_kind(scope), "close_code": None}
    if logger.isEnabledFor(logging.INFO):
        fields.update(
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
            client=client_address(scope),
        )
        token = request_id.set(rid)
        try:
            _log_line(event, logging.INFO, fields)
        finally:
            request_id.reset(token)
    return rid


@functools.lru_cache(maxsize=64)
def _door_route(path: str) -> str:
    # The door answers only its own few exact paths: resolved once each.
    return route_of({"path": path, "headers": []})


class LoopLagProbe:
    """Measures how long a callback waits for the event loop, from a thread:
    every `interval` it schedules a callback and sets herder_event_loop_lag_seconds
    to its wait (or, while it still waits, to how long it has waited so far).
    Also refreshes this process's own gauges (metrics.refresh_local)."""

    def __init__(self, interval: float = 1.0, refresh_every: int = 5) -> None:
        self.interval = interval
        self.refresh_every = refresh_every
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is loop:
            return
        with self._lock:
            self._loop = loop
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="herder-loop-lag", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        pending: list = []  # [send time, loop] of the probe not yet run
        ticks = 0
        while True:
            time.sleep(self.interval)
            ticks += 1
            if ticks % self.refresh_every == 0:
                try:
                    metrics.refresh_local()
                except Exception:
                    logger.debug("metrics: refreshing local gauges failed", exc_info=True)
            loop = self._loop
            if loop is None or loop.is_closed() or (pending and pending[1] is not loop):
                pending.clear()  # a probe sent to a loop that ended never runs
                if loop is None or loop.is_closed():
                    continue
            now = time.monotonic()
            if pending:
                metrics.event_loop_lag.set(now - pending[0])  # still waiting: at least this late
                continue
            sent = now
            pending[:] = [sent, loop]

            def ran(sent=sent) -> None:
                metrics.event_loop_lag.set(time.monotonic() - sent)
                pending.clear()
                metrics.flush_relayed()  # on the loop's thread, as counting is

            try:
                loop.call_soon_threadsafe(ran)
            except RuntimeError:  # the loop closed meanwhile
                pending.clear()


probe = LoopLagProbe()
