"""Request bodies capped while they stream, before Django spools them.

nginx's `client_max_body_size` in front of Django: a declared Content-Length
over the route's cap is answered 413 before a byte of the body is read; a body
without one (chunked) is read here, counting, and answered 413 as soon as it
passes the cap, so no more than the cap plus one chunk ever reaches memory,
and nothing reaches disk. Django's ASGI handler otherwise reads every body to
its end into a temporary file before any view can refuse it.

A chunked body within its cap is handed on with a Content-Length: Django's
form parsing and DRF's read a body without one as empty.

Large bodies (chunked, or declared over HERDER_MAX_BODY) are also counted
while their request lasts: at most HERDER_UPLOADS_PER_CLIENT per client and
HERDER_UPLOADS_MAX in all, else 429 before any is read. So the memory and
disk that bodies take is bounded in total, not only per request.

A route that needs a token (daemon spawn) has it checked before a large body
is read: a stranger without a valid one is answered 401 at once, instead of
making the herder read the cap's worth of bytes for a request it would refuse.

Holds on uvicorn (`herd`'s default). Daphne reads whole bodies itself before
the application sees them: put a proxy with its own cap in front of it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from django.conf import settings

from herder.admission import Slots, client_of, note_refusal
from herder.errors import TooManyRequests
from herder.gate import send_refusal

# Multipart or form framing around the files themselves.
FORM_OVERHEAD = 1024 * 1024
# Routes whose body carries files: minion and daemon spawn.
_FILE_ROUTES = ("/minion/v1/spawn", "/daemon/v1/spawn")


def minion_body_cap() -> int:
    """The largest request body a minion or daemon spawn may send."""
    return settings.HERDER_MINION_MAX_BYTES + FORM_OVERHEAD


def body_cap(path: str) -> int:
    """The most bytes a request body to `path` may have."""
    if path.rstrip("/") in _FILE_ROUTES:
        return minion_body_cap()
    if path.startswith("/admin/"):
        return settings.HERDER_ADMIN_MAX_BODY
    return settings.HERDER_MAX_BODY


# Requests with large bodies in progress (their bodies held here or spooled by Django).
uploads = Slots("upload", per_client="HERDER_UPLOADS_PER_CLIENT", total="HERDER_UPLOADS_MAX")


async def _answer(send, status: int, code: str, detail: str, *headers: tuple[bytes, bytes]) -> None:
    """A JSON error in the handler's shape; the rest of the body is never
    read, so the connection cannot be reused."""
    body = json.dumps({"code": code, "detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                (b"access-control-allow-origin", b"*"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _too_large(send, cap: int, length: int | None) -> None:
    note_refusal("payload_too_large")
    sent = f"{length} bytes" if length is not None else "more"
    await _answer(send, 413, "payload_too_large", f"The request body has {sent}; this route takes at most {cap}.")


async def _bad_length(send) -> None:
    body = b'{"code": "bad_input", "detail": "The Content-Length header is not a number."}'
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _unauthorized(send, detail: str) -> None:
    await _answer(send, 401, "invalid_token", detail, (b"www-authenticate", b'Bearer realm="herder"'))


class BodyCap:
    """The ASGI layer. `skip`: path prefixes it leaves alone (the daemon
    proxy streams bodies to the daemon and caps nothing itself).
    `token_routes`: exact paths whose large bodies are read only once
    `token_refusal(scope)` (awaited) finds no reason to refuse (it returns one)."""

    def __init__(
        self,
        app,
        *,
        skip: tuple[str, ...] = (),
        token_routes: frozenset[str] = frozenset(),
        token_refusal: Callable[[dict], Awaitable[str | None]] | None = None,
    ) -> None:
        self.app = app
        self.skip = skip
        self.token_routes = token_routes
        self.token_refusal = token_refusal

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or (self.skip and scope["path"].startswith(self.skip)):
            return await self.app(scope, receive, send)
        cap = body_cap(scope["path"])
        declared = [value for name, value in scope["headers"] if name == b"content-length"]
        if declared:
            try:
                length = int(declared[0])
            except ValueError:
                return await _bad_length(send)
            if length > cap:
                return await _too_large(send, cap, length)
            if length <= settings.HERDER_MAX_BODY:
                # The server reads no more than the declared length.
                return await self.app(scope, receive, send)
        elif any(name == b"transfer-encoding" for name, _ in scope["headers"]):
            length = None
        else:
            # Neither: a request without a body.
            return await self.app(scope, receive, send)
        if self.token_refusal is not None and scope["path"] in self.token_routes:
            detail = await self.token_refusal(scope)
            if detail is not None:
                return await _unauthorized(send, detail)
        client = client_of(scope)
        try:
            uploads.acquire(client)
        except TooManyRequests as refusal:
            return await send_refusal(send, refusal)
        try:
            if length is not None:
                return await self.app(scope, receive, send)
            return await self._chunked(scope, receive, send, cap)
        finally:
            uploads.release(client)

    async def _chunked(self, scope, receive, send, cap: int):
        """No Content-Length: read the body here, up to the cap."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > cap:
                return await _too_large(send, cap, None)
            if not message.get("more_body"):
                break
        headers = [(name, value) for name, value in scope["headers"] if name != b"transfer-encoding"]
        if body:
            headers.append((b"content-length", str(len(body)).encode()))
        replayed = False

        async def replay():
            nonlocal replayed, body
            if not replayed:
                replayed = True
                message = {"type": "http.request", "body": bytes(body), "more_body": False}
                body = bytearray()
                return message
            # Then what the server says next: a disconnect.
            return await receive()

        return await self.app(dict(scope, headers=headers), replay, send)
