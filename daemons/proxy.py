"""The reverse proxy to daemons: /daemon/v1/proxy/<Name>/<path>.

HTTP (any method) is an ASGI app of its own, so bodies stream both ways
without being buffered; WebSocket upgrades go through DaemonProxyConsumer.
Either reaches only the first declared port of the named daemon.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import weakref

import aiohttp
import websockets
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from multidict import CIMultiDict
from yarl import URL

from daemons.models import Daemon

PREFIX = "/daemon/v1/proxy/"
_PATH = re.compile(r"^/daemon/v1/proxy/(?P<name>[^/]+)(?P<path>/.*)?$")
# RFC 9110 7.6.1: meaningful for one connection only, never forwarded.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-connection",
})

# One pooled session per event loop: connections to daemons are reused, and
# a pooled connection belongs to the loop that opened it.
_sessions: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _upstream_session() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None or session.closed:
        session = _sessions[loop] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200, limit_per_host=100),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            # Bytes pass through as the daemon sent them, with the client's
            # headers only: none of aiohttp's own, no cookies kept.
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
    return session


async def close_upstream_session() -> None:
    """Close this event loop's pooled session (before the loop itself closes)."""
    session = _sessions.pop(asyncio.get_running_loop(), None)
    if session is not None:
        await session.close()


# full name -> (target, when to look again). Spawn and kill forget their entry
# at once in this process; other processes see changes within the TTL. Misses
# are not kept, so a daemon is reachable as soon as it runs.
_targets: dict[str, tuple[tuple[str, int], float]] = {}
_TARGET_TTL = 2.0


def forget_target(full_name: str) -> None:
    _targets.pop(full_name, None)


async def daemon_target(full_name: str) -> tuple[str, int] | None:
    """Where the running daemon's first declared port is published, or None.
    Cached: no database or Docker call on most proxied requests."""
    now = time.monotonic()
    cached = _targets.get(full_name)
    if cached is not None and cached[1] > now:
        return cached[0]
    target = await _lookup_target(full_name)
    if target is not None:
        if len(_targets) > 10_000:
            _targets.clear()
        _targets[full_name] = (target, now + _TARGET_TTL)
    return target


@database_sync_to_async
def _lookup_target(full_name: str) -> tuple[str, int] | None:
    daemon = Daemon.objects.filter(full_name=full_name, state=Daemon.State.RUNNING).first()
    if daemon is None or daemon.first_port is None:
        return None
    host_port = daemon.host_ports.get(str(daemon.first_port))
    if host_port is None:
        return None
    host = settings.HERDER_DAEMON_PORT_HOST
    return ("127.0.0.1" if host in ("0.0.0.0", "") else host), int(host_port)


def _end_to_end(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Without the hop-by-hop headers, and those the Connection header names."""
    named = set(HOP_BY_HOP)
    for key, value in headers:
        if key.lower() == b"connection":
            named |= {token.strip().lower() for token in value.decode("latin-1").split(",")}
    return [(k, v) for k, v in headers if k.decode("latin-1").lower() not in named]


def _forwarded_headers(scope: dict, headers: list[tuple[bytes, bytes]], name: str) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in _end_to_end(headers) if k.lower() != b"host"]
    client = (scope.get("client") or ("", 0))[0]
    host = dict(headers).get(b"host", b"").decode("latin-1")
    proto = scope.get("scheme", "http")
    prior = dict(headers).get(b"x-forwarded-for", b"").decode("latin-1")
    kept = [(k, v) for k, v in kept if not k.lower().startswith(b"x-forwarded-")]
    kept += [
        (b"x-forwarded-for", f"{prior}, {client}".lstrip(", ").encode("latin-1")),
        (b"x-forwarded-proto", proto.encode()),
        (b"x-forwarded-host", host.encode("latin-1")),
        (b"x-forwarded-prefix", f"{PREFIX}{name}".encode("latin-1")),
    ]
    return kept


def _split(path: str) -> tuple[str, str]:
    match = _PATH.match(path)
    if match is None:
        return "", "/"
    return match["name"], match["path"] or "/"


async def _send_error(send, status: int, code: str, detail: str) -> None:
    body = json.dumps({"code": code, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"access-control-allow-origin", b"*")]})
    await send({"type": "http.response.body", "body": body})


async def proxy_http(scope: dict, receive, send) -> None:
    """ASGI app for HTTP under PREFIX."""
    name, path = _split(scope["path"])
    target = await daemon_target(name) if name else None
    if target is None:
        await _send_error(send, 404, "not_found", f"No running daemon {name!r} with a port.")
        return
    query = scope.get("query_string", b"").decode("latin-1")
    url = f"http://{target[0]}:{target[1]}{path}" + (f"?{query}" if query else "")

    async def body():
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if message.get("body"):
                yield message["body"]
            if not message.get("more_body"):
                return

    names = {k.lower() for k, _ in scope["headers"]}
    has_body = b"content-length" in names or b"transfer-encoding" in names
    headers = [(k.decode("latin-1"), v.decode("latin-1"))
               for k, v in _forwarded_headers(scope, scope["headers"], name)]
    try:
        upstream = await _upstream_session().request(
            scope["method"], URL(url, encoded=True), headers=CIMultiDict(headers),
            data=body() if has_body else None, allow_redirects=False,
        )
    except (aiohttp.ClientError, OSError) as exc:
        await _send_error(send, 502, "bad_gateway", f"The daemon did not answer: {type(exc).__name__}.")
        return
    async with upstream:
        await send({"type": "http.response.start", "status": upstream.status,
                    "headers": _end_to_end(list(upstream.raw_headers))})
        async for chunk in upstream.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


class PrefixRouter:
    """Send HTTP under PREFIX to the proxy, everything else to Django."""

    def __init__(self, django_application) -> None:
        self.django_application = django_application

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(PREFIX):
            return await proxy_http(scope, receive, send)
        return await self.django_application(scope, receive, send)


class DaemonProxyConsumer(AsyncWebsocketConsumer):
    """A WebSocket under PREFIX, relayed to the same path on the daemon."""

    async def connect(self) -> None:
        name, path = _split(self.scope["path"])
        target = await daemon_target(name)
        if target is None:
            await self.close(code=4404)
            return
        query = self.scope.get("query_string", b"").decode("latin-1")
        url = f"ws://{target[0]}:{target[1]}{path}" + (f"?{query}" if query else "")
        headers = [(k.decode("latin-1"), v.decode("latin-1"))
                   for k, v in _forwarded_headers(self.scope, self.scope["headers"], name)
                   if not k.lower().startswith(b"sec-websocket") and k.lower() not in (b"origin",)]
        try:
            self.upstream = await websockets.connect(
                url, additional_headers=headers, subprotocols=self.scope.get("subprotocols") or None,
                max_size=None, open_timeout=5,
            )
        except (OSError, websockets.exceptions.WebSocketException, asyncio.TimeoutError):
            await self.close(code=4502)
            return
        await self.accept(self.upstream.subprotocol)
        self.pump = asyncio.create_task(self._from_daemon())

    async def _from_daemon(self) -> None:
        try:
            async for message in self.upstream:
                if isinstance(message, bytes):
                    await self.send(bytes_data=message)
                else:
                    await self.send(text_data=message)
        except websockets.exceptions.ConnectionClosed:
            pass
        await self.close()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        try:
            await self.upstream.send(bytes_data if bytes_data is not None else text_data)
        except websockets.exceptions.ConnectionClosed:
            await self.close()

    async def disconnect(self, code) -> None:
        upstream = getattr(self, "upstream", None)
        if upstream is not None:
            await upstream.close()
        pump = getattr(self, "pump", None)
        if pump is not None:
            pump.cancel()
