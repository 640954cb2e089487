"""The reverse proxy to daemons: each daemon's first declared port, reached two ways.

- Its own origin (HERDER_DAEMON_ORIGIN, e.g. `https://{name}.daemons.example.org`,
  as JupyterHub's subdomain_host): every request whose Host matches goes to the
  daemon at its path as is. The daemon's cookies travel both ways, but never
  with a Domain attribute, which could cover the herder's host.
- The path route `/daemon/v1/proxy/<Name>/<path>` on the herder's origin, kept
  for the original's clients. The browser's cookies there are the herder's
  (sessionid, csrftoken): none reaches the daemon, no Set-Cookie comes back,
  and every answer carries a CSP sandbox without allow-same-origin, so a
  daemon's page there is an opaque origin that can neither read nor use the
  herder's cookies, storage or admin.

HTTP is an ASGI app of its own (bodies stream both ways, never buffered):
requests without a body (but HEAD) go to the daemon through daemons/upstream.py,
the others through aiohttp; WebSockets go through DaemonProxyConsumer. Per daemon and process at most
HERDER_PROXY_MAX_PER_DAEMON requests and sockets are relayed at once (then
429), and connect, read and idle timeouts bound each, so a hanging daemon or
slow clients hold only that daemon's slots.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import weakref
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote, unquote_to_bytes

import aiohttp
import websockets
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from multidict import CIMultiDict
from yarl import URL

from daemons import upstream
from daemons.models import Daemon

PREFIX = "/daemon/v1/proxy/"
_PATH = re.compile(r"^/daemon/v1/proxy/(?P<name>[^/]+)(?P<path>/.*)?$", re.S)
# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "proxy-connection",
    }
)
# The path route's pages: scripts and forms work, but in an opaque origin
# (no allow-same-origin): no access to the herder's cookies, storage or pages.
SANDBOX = (
    b"sandbox allow-scripts allow-forms allow-popups allow-modals allow-downloads allow-pointer-lock allow-presentation"
)
# Escapes that would change what the daemon sees once it decodes the path:
# control characters (CR LF: a second request line; NUL), '/', '\\', '?', '#'.
_BAD_ESCAPE = re.compile(rb"%(?:[01][0-9a-f]|7f|2f|5c|3f|23)", re.I)
# Answer headers that act on more than the daemon: Clear-Site-Data "cookies"
# clears the whole site's (the herder's too); a service worker's scope.
_DROPPED_ANSWER_HEADERS = frozenset({b"clear-site-data", b"service-worker-allowed"})


@dataclass(frozen=True)
class Route:
    """Which daemon a request is for and how it came."""

    key: str  # the daemon's Name (path route) or host label (its origin)
    on_origin: bool
    path: str  # percent-encoded as the client sent it, never decoded
    prefix: str = ""  # the path route's prefix, for X-Forwarded-Prefix


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    daemon: int  # the row's pk: connection slots are per daemon


class BadPath(ValueError):
    pass


# --- Routing ---------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _origin_pattern(origin: str) -> re.Pattern | None:
    if not origin:
        return None
    host = origin.split("://", 1)[-1].split(":", 1)[0]
    rest = host.split("{name}", 1)[1]
    # Only the shape services.host_label makes (name, '-', 16 hex digits): a
    # sibling host such as the herder's own "admin.example.org" never matches.
    return re.compile(r"(?P<label>(?:[a-z0-9][a-z0-9-]{0,39}-)?[0-9a-f]{16})" + re.escape(rest.lower()))


def origin_url(label: str) -> str | None:
    """The daemon's own origin, or None when HERDER_DAEMON_ORIGIN is off."""
    origin = settings.HERDER_DAEMON_ORIGIN
    if not origin or not label:
        return None
    if "://" not in origin:
        origin = f"{settings.HERDER_PUBLIC_URL.split('://', 1)[0]}://{origin}"
    return origin.replace("{name}", label) + "/"


def _header(scope: dict, name: bytes) -> str:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _raw_path(scope: dict) -> str:
    raw = scope.get("raw_path")
    if raw:
        return raw.decode("latin-1")
    return quote(scope["path"], safe="/:@!$&'()*+,;=-._~%")


def route_of(scope: dict) -> Route | None:
    """The daemon route of an HTTP or WebSocket scope, or None for the herder's own."""
    pattern = _origin_pattern(settings.HERDER_DAEMON_ORIGIN)
    if pattern is not None:
        host = _header(scope, b"host").lower()
        if host.startswith("["):
            host = ""  # an IPv6 literal is never a daemon's name
        match = pattern.fullmatch(host.rsplit(":", 1)[0] if ":" in host else host)
        if match is not None:
            return Route(key=match["label"], on_origin=True, path=_raw_path(scope))
    if not scope["path"].startswith(PREFIX):
        return None
    match = _PATH.match(_raw_path(scope))
    if match is None:
        return Route(key="", on_origin=False, path="/")
    name = unquote_to_bytes(match["name"]).decode("latin-1")
    return Route(key=name, on_origin=False, path=match["path"] or "/", prefix=f"{PREFIX}{match['name']}")


def check_path(path: str) -> None:
    """Raise BadPath for a path that would mean something else to the daemon
    than to the proxy: encoded control characters, '/', '\\', '?', '#', raw
    control characters or backslashes, '.' or '..' segments (also encoded)."""
    raw = path.encode("latin-1")
    if not raw.startswith(b"/") or _BAD_ESCAPE.search(raw):
        raise BadPath(path)
    if any(byte < 0x21 or byte in (0x5C, 0x7F) for byte in raw):
        raise BadPath(path)
    if any(segment in (b".", b"..") for segment in unquote_to_bytes(raw).split(b"/")):
        raise BadPath(path)


# --- Where a daemon is -----------------------------------------------------------------

# "n:<Name>" / "h:<label>" -> (target, when to look again). Spawn and kill forget
# their entries at once in this process; other processes see changes within the
# TTL. Misses are not kept, so a daemon is reachable as soon as it runs.
_targets: dict[str, tuple[Target, float]] = {}
_TARGET_TTL = 2.0


def _cache_key(route: Route) -> str:
    return ("h:" if route.on_origin else "n:") + route.key


def forget_target(daemon: Daemon) -> None:
    _targets.pop("n:" + daemon.full_name, None)
    _targets.pop("h:" + daemon.host_label, None)


# Cache key -> its lookup in flight. When an entry expires under load, every
# request in flight for that daemon misses at once: they wait for one lookup
# (one database connection) instead of each making its own.
_lookups: dict[str, asyncio.Future] = {}


async def daemon_target(route: Route) -> Target | None:
    """Where the running daemon's first declared port is published, or None.
    Cached: no database or Docker call on most proxied requests."""
    if not route.key:
        return None
    key = _cache_key(route)
    cached = _targets.get(key)
    if cached is not None and cached[1] > time.monotonic():
        return cached[0]
    lookup = _lookups.get(key)
    if lookup is None or lookup.get_loop() is not asyncio.get_running_loop():
        lookup = _lookups[key] = asyncio.ensure_future(_lookup_and_remember(route))
        lookup.add_done_callback(lambda done: _lookup_done(key, done))
    # Shielded: a client that leaves does not cancel the others' lookup.
    return await asyncio.shield(lookup)


async def _lookup_and_remember(route: Route) -> Target | None:
    target = await _lookup_target(route)
    _remember(route, target)
    return target


def _lookup_done(key: str, done: asyncio.Future) -> None:
    if _lookups.get(key) is done:
        del _lookups[key]
    if not done.cancelled():
        done.exception()  # retrieved: every waiter may have left


def _remember(route: Route, target: Target | None) -> None:
    if target is None:
        _targets.pop(_cache_key(route), None)
        return
    if len(_targets) > 10_000:
        _targets.clear()
    _targets[_cache_key(route)] = (target, time.monotonic() + _TARGET_TTL)


@database_sync_to_async
def _lookup_target(route: Route) -> Target | None:
    query = Daemon.objects.filter(state=Daemon.State.RUNNING)
    daemon = (query.filter(host_label=route.key) if route.on_origin else query.filter(full_name=route.key)).first()
    if daemon is None or daemon.first_port is None:
        return None
    from daemons.services import daemon_address

    found = daemon_address(daemon)
    return Target(found[0], found[1], daemon.pk) if found else None


# daemon pk -> when its port was last asked of the engine: a flood of requests
# to a daemon that is down costs one engine call a second, not one each.
_refreshed: dict[int, float] = {}
_REFRESH_EVERY = 1.0


async def _refreshed_target(route: Route, stale: Target) -> Target | None:
    """After a refused connection: the daemon's port as the engine publishes it
    now (Docker restarted it), or None when it did not move."""
    from daemons.services import daemon_refresh_target

    now = time.monotonic()
    if now - _refreshed.get(stale.daemon, 0.0) < _REFRESH_EVERY:
        return None
    if len(_refreshed) > 10_000:
        _refreshed.clear()
    _refreshed[stale.daemon] = now

    found = await database_sync_to_async(daemon_refresh_target)(
        **({"label": route.key} if route.on_origin else {"full_name": route.key})
    )
    if found is None or found == (stale.host, stale.port):
        return None
    target = Target(found[0], found[1], stale.daemon)
    _remember(route, target)
    return target


# --- Connection slots per daemon -------------------------------------------------------

_active: Counter = Counter()


def _take_slot(target: Target) -> bool:
    if _active[target.daemon] >= settings.HERDER_PROXY_MAX_PER_DAEMON:
        return False
    _active[target.daemon] += 1
    return True


def _free_slot(target: Target) -> None:
    _active[target.daemon] -= 1
    if _active[target.daemon] <= 0:
        del _active[target.daemon]


# --- Headers ---------------------------------------------------------------------------


_HOP_BY_HOP = frozenset(name.encode() for name in HOP_BY_HOP)


def _end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Without the hop-by-hop headers, and those the Connection header names."""
    named = _HOP_BY_HOP
    for key, value in headers:
        if key.lower() == b"connection":
            named = named | {token.strip().lower() for token in value.split(b",")}
    return [(k, v) for k, v in headers if k.lower() not in named]


def _forwarded_headers(scope: dict, route: Route) -> list[tuple[str, str]]:
    """The client's headers as the daemon gets them. On the path route the
    browser's cookies are the herder's: none is forwarded."""
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in _forwarded_raw(scope, route)]


def _forwarded_raw(scope: dict, route: Route) -> list[tuple[bytes, bytes]]:
    """_forwarded_headers as bytes."""
    headers = scope["headers"]
    dropped = {b"host"} if route.on_origin else {b"host", b"cookie"}
    kept = [
        (k, v)
        for k, v in _end_to_end(headers)
        if k.lower() not in dropped and not k.lower().startswith(b"x-forwarded-")
    ]
    client = (scope.get("client") or ("", 0))[0]
    prior = _header(scope, b"x-forwarded-for")
    kept += [
        (b"x-forwarded-for", f"{prior}, {client}".lstrip(", ").encode("latin-1")),
        (b"x-forwarded-proto", scope.get("scheme", "http").encode()),
        (b"x-forwarded-host", _header(scope, b"host").encode("latin-1")),
    ]
    if route.prefix:
        kept.append((b"x-forwarded-prefix", route.prefix.encode("latin-1")))
    return kept


def _without_domain(cookie: bytes) -> bytes:
    """A Set-Cookie without its Domain attribute: host-only, for the daemon's
    own host and never a parent domain the herder lives under."""
    parts = cookie.split(b";")
    return b";".join([parts[0]] + [p for p in parts[1:] if p.split(b"=", 1)[0].strip().lower() != b"domain"])


def _answer_headers(headers: list[tuple[bytes, bytes]], route: Route) -> list[tuple[bytes, bytes]]:
    kept = []
    for key, value in _end_to_end(headers):
        name = key.lower()
        if name in _DROPPED_ANSWER_HEADERS:
            continue
        if name == b"set-cookie":
            if not route.on_origin:
                continue  # it would land on the herder's origin
            value = _without_domain(value)
        kept.append((key, value))
    if not route.on_origin:
        kept += [(b"content-security-policy", SANDBOX), (b"x-content-type-options", b"nosniff")]
    return kept


# --- HTTP ------------------------------------------------------------------------------


async def _send_error(send, status: int, code: str, detail: str, headers=()) -> None:
    body = json.dumps({"code": code, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"x-content-type-options", b"nosniff"),
                (b"access-control-allow-origin", b"*"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def proxy_http(scope: dict, receive, send, route: Route) -> None:
    """ASGI app for HTTP to a daemon."""
    try:
        check_path(route.path)
    except BadPath:
        await _send_error(send, 400, "bad_path", "That path would mean something else to the daemon.")
        return
    target = await daemon_target(route)
    if target is None:
        await _send_error(send, 404, "not_found", "No running daemon of that name with a port.")
        return
    if not _take_slot(target):
        await _send_error(
            send,
            429,
            "too_many_requests",
            "That daemon has as many connections as it may have; try again.",
            headers=[(b"retry-after", b"1")],
        )
        return
    try:
        await _relay_http(scope, receive, send, route, target)
    finally:
        _free_slot(target)


# One pooled session per event loop: connections to daemons are reused, and
# a pooled connection belongs to the loop that opened it.
_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _upstream_session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        session = _sessions[loop] = aiohttp.ClientSession(
            # No pool-wide or per-host cap: the slots above bound each daemon,
            # and a shared cap would let one hanging daemon queue the others.
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            # Set once per session: a ClientTimeout passed on every request
            # halved the proxy's throughput (bench/daemons.py).
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=settings.HERDER_PROXY_CONNECT_TIMEOUT,
                sock_read=settings.HERDER_PROXY_READ_TIMEOUT,
            ),
            # Bytes pass through as the daemon sent them, with the client's
            # headers only: none of aiohttp's own, no cookies kept.
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
    return session


async def close_upstream_session() -> None:
    """Close this event loop's pooled session and connections (before the loop itself closes)."""
    upstream.close_idle()
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


class _ClientIdle(Exception):
    pass


async def _relay_http(scope: dict, receive, send, route: Route, target: Target) -> None:
    idle = settings.HERDER_PROXY_IDLE_TIMEOUT
    query = scope.get("query_string", b"").decode("latin-1")

    async def body():
        while True:
            try:
                # asyncio.timeout, not wait_for: wait_for makes a task per call.
                async with asyncio.timeout(idle):
                    message = await receive()
            except TimeoutError:
                raise _ClientIdle() from None
            if message["type"] == "http.disconnect":
                return
            if message.get("body"):
                yield message["body"]
            if not message.get("more_body"):
                return

    names = {k.lower() for k, _ in scope["headers"]}
    has_body = b"content-length" in names or b"transfer-encoding" in names
    if not has_body and scope["method"] not in _AIOHTTP_METHODS:
        raw = _forwarded_raw(scope, route)
        raw_query = scope.get("query_string", b"")
        if (
            _TOKEN.fullmatch(scope["method"])
            and not _UNSAFE_QUERY.search(raw_query)
            and not _UNSAFE_HEADER.search(b"".join(b"".join(pair) for pair in raw))
        ):
            await _relay_plain(scope, send, route, target, raw, query)
            return
    headers = CIMultiDict(_forwarded_headers(scope, route))
    for attempt in (1, 2):
        url = f"http://{target.host}:{target.port}{route.path}" + (f"?{query}" if query else "")
        try:
            upstream = await _upstream_session().request(
                scope["method"],
                URL(url, encoded=True),
                headers=headers,
                data=body() if has_body else None,
                allow_redirects=False,
            )
            break
        except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
            # Refused (Docker may have restarted the daemon on new host ports),
            # or a pooled connection the daemon had closed: once more, when
            # no byte of the body was read (refused, or no body at all).
            replayable = isinstance(exc, aiohttp.ClientConnectorError) or not has_body
            if attempt == 2 or not replayable:
                await _send_error(send, 502, "bad_gateway", f"The daemon did not answer: {type(exc).__name__}.")
                return
            target = await _refreshed_target(route, target) or target
        except asyncio.TimeoutError:
            await _send_error(send, 504, "gateway_timeout", "The daemon did not answer in time.")
            return
        except _ClientIdle:
            await _send_error(send, 408, "request_timeout", "The request body stopped arriving.")
            return
        except (aiohttp.ClientError, OSError) as exc:
            await _send_error(send, 502, "bad_gateway", f"The daemon did not answer: {type(exc).__name__}.")
            return
    async with upstream:
        await send(
            {
                "type": "http.response.start",
                "status": upstream.status,
                "headers": _answer_headers(list(upstream.raw_headers), route),
            }
        )
        content = upstream.content
        try:
            while chunk := await content.readany():
                # The last chunk (a small answer's only one) ends the body itself:
                # one message less to send.
                more = not content.at_eof()
                # A client that stops reading holds the slot no longer than this.
                async with asyncio.timeout(idle):
                    await send({"type": "http.response.body", "body": chunk, "more_body": more})
                if not more:
                    return
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError):
            # Cut off mid-answer: returning without ending the body makes the
            # server drop the connection, so the client sees it was cut.
            return
        await send({"type": "http.response.body", "body": b""})


# Requests aiohttp still relays besides those with a body: HEAD (its answer's
# Content-Length announces a body that never comes, which only the client that
# sent the HEAD knows) and CONNECT.
_AIOHTTP_METHODS = frozenset({"HEAD", "CONNECT"})
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_UNSAFE_QUERY = re.compile(rb"[^\x21-\x7e]")
_UNSAFE_HEADER = re.compile(rb"[\x00\r\n]")


async def _relay_plain(
    scope: dict, send, route: Route, target: Target, headers: list[tuple[bytes, bytes]], query: str
) -> None:
    """_relay_http for a request without a body, through daemons/upstream.py."""
    idle = settings.HERDER_PROXY_IDLE_TIMEOUT
    read_timeout = settings.HERDER_PROXY_READ_TIMEOUT
    request_target = route.path + (f"?{query}" if query else "")
    for attempt in (1, 2):
        address = (target.host, target.port)
        head = upstream.request_head(scope["method"], request_target, target.host, target.port, headers)
        try:
            connection, _ = await upstream.send(
                address,
                head,
                connect_timeout=settings.HERDER_PROXY_CONNECT_TIMEOUT,
                read_timeout=read_timeout,
                fresh=attempt == 2,
            )
            break
        except (upstream.Refused, upstream.Dropped) as exc:
            # Refused (Docker may have restarted the daemon on new host ports),
            # or a kept connection the daemon had closed: once more.
            if attempt == 2:
                await _send_error(send, 502, "bad_gateway", f"The daemon did not answer: {type(exc).__name__}.")
                return
            if isinstance(exc, upstream.Refused):
                target = await _refreshed_target(route, target) or target
        except TimeoutError:
            await _send_error(send, 504, "gateway_timeout", "The daemon did not answer in time.")
            return
        except (upstream.BadAnswer, OSError) as exc:
            await _send_error(send, 502, "bad_gateway", f"The daemon did not answer: {type(exc).__name__}.")
            return
    try:
        await send(
            {
                "type": "http.response.start",
                "status": connection.status,
                "headers": _answer_headers(connection.headers, route),
            }
        )
        while True:
            chunk = connection.chunk_nowait()
            if chunk is None:
                async with asyncio.timeout(read_timeout):
                    chunk = await connection.chunk()
            if not chunk:
                break
            # The last chunk (a small answer's only one) ends the body itself.
            more = not connection.done
            # A client that stops reading holds the slot no longer than this.
            async with asyncio.timeout(idle):
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if not more:
                return
        await send({"type": "http.response.body", "body": b""})
    except (TimeoutError, upstream.Cut, upstream.BadAnswer, OSError):
        # Cut off mid-answer: returning without ending the body makes the
        # server drop the connection, so the client sees it was cut.
        return
    finally:
        upstream.give_back(address, connection)


class PrefixRouter:
    """In front of everything: requests for a daemon's origin (any path) and
    the path route go to the proxy, HTTP and WebSocket; the rest to the herder."""

    def __init__(self, application) -> None:
        self.application = application
        self.websocket = DaemonProxyConsumer.as_asgi()

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            route = route_of(scope)
            if route is not None:
                if scope["type"] == "http":
                    return await proxy_http(scope, receive, send, route)
                return await self.websocket({**scope, "daemon_route": route}, receive, send)
        return await self.application(scope, receive, send)


# --- WebSocket -------------------------------------------------------------------------


class DaemonProxyConsumer(AsyncWebsocketConsumer):
    """A WebSocket to a daemon, relayed to the same path on it (the route is
    set by PrefixRouter). Closed after HERDER_PROXY_IDLE_TIMEOUT seconds
    without a frame either way."""

    upstream = None
    pump = None
    watchdog = None
    target: Target | None = None

    async def connect(self) -> None:
        route: Route = self.scope["daemon_route"]
        try:
            check_path(route.path)
        except BadPath:
            await self.close(code=4400)
            return
        target = await daemon_target(route)
        if target is None:
            await self.close(code=4404)
            return
        if not _take_slot(target):
            await self.close(code=4429)
            return
        self.target = target
        query = self.scope.get("query_string", b"").decode("latin-1")
        # On its own origin the daemon sees the page's Origin (to refuse
        # cross-site sockets); on the path route it would be the herder's.
        headers = [
            (k, v)
            for k, v in _forwarded_headers(self.scope, route)
            if not k.lower().startswith("sec-websocket") and (route.on_origin or k.lower() != "origin")
        ]
        for attempt in (1, 2):
            url = f"ws://{target.host}:{target.port}{route.path}" + (f"?{query}" if query else "")
            try:
                self.upstream = await websockets.connect(
                    url,
                    additional_headers=headers,
                    subprotocols=self.scope.get("subprotocols") or None,
                    max_size=16 * 1024 * 1024,
                    open_timeout=settings.HERDER_PROXY_CONNECT_TIMEOUT,
                    ping_interval=None,
                )
                break
            except OSError:
                fresh = await _refreshed_target(route, target) if attempt == 1 else None
                if fresh is None:
                    await self.close(code=4502)
                    return
                target = fresh
            except (websockets.exceptions.WebSocketException, asyncio.TimeoutError):
                await self.close(code=4502)
                return
        await self.accept(self.upstream.subprotocol)
        self._touch()
        self.pump = asyncio.create_task(self._from_daemon())
        self.watchdog = asyncio.create_task(self._idle_watch())

    def _touch(self) -> None:
        self.last_frame = time.monotonic()

    async def _idle_watch(self) -> None:
        idle = settings.HERDER_PROXY_IDLE_TIMEOUT
        while True:
            left = self.last_frame + idle - time.monotonic()
            if left <= 0:
                self._release()
                await self.close(code=1001)
                return
            await asyncio.sleep(left)

    async def _from_daemon(self) -> None:
        try:
            async for message in self.upstream:
                self._touch()
                if isinstance(message, bytes):
                    await self.send(bytes_data=message)
                else:
                    await self.send(text_data=message)
        except websockets.exceptions.ConnectionClosed:
            pass
        await self.close()
        self._release()

    def _release(self) -> None:
        """Give the daemon's slot back, once (at close or at disconnect)."""
        if self.target is not None:
            _free_slot(self.target)
            self.target = None

    async def receive(self, text_data=None, bytes_data=None) -> None:
        self._touch()
        try:
            await self.upstream.send(bytes_data if bytes_data is not None else text_data)
        except websockets.exceptions.ConnectionClosed:
            await self.close()

    async def disconnect(self, code) -> None:
        if self.upstream is not None:
            await self.upstream.close()
        for task in (self.pump, self.watchdog):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._release()
