"""WebSocket admission: one ASGI layer in front of every WebSocket route.

- Connections per client address and in total (HERDER_WS_MAX_PER_CLIENT,
  HERDER_WS_MAX; this process's, in herder.admission Slots). Past either the
  handshake is refused before any consumer, token check or database query runs:
  with HTTP 429 and Retry-After where the server supports the
  `websocket.http.response` extension (uvicorn), else accepted, told
  `{"type": "error", "code": "too_many_requests", ...}` and closed with 4429.
- Messages larger than HERDER_WS_MAX_FRAME close the socket with 1009. uvicorn
  and Daphne refuse them before buffering them whole (herder/servers.py); this
  check holds under any other server too.

It counts by address, not account: it runs before the token is read, so a
flood costs no signature check.
"""

from __future__ import annotations

import json

from django.conf import settings

from herder.admission import Slots, client_of
from herder.errors import TooManyRequests

# 1009: "message too big" (RFC 6455).
CLOSE_TOO_BIG = 1009
CLOSE_TOO_MANY = 4429

sockets = Slots("websocket", per_client="HERDER_WS_MAX_PER_CLIENT", total="HERDER_WS_MAX")


def snapshot() -> dict:
    """WebSockets open in this process against their limits, for /pressure."""
    return {**sockets.snapshot(), "max_frame": settings.HERDER_WS_MAX_FRAME}


def door_refusal(scope: dict) -> TooManyRequests | None:
    """WebSocketLimits' refusal of this handshake, judged at the door (herder/door.py)."""
    return sockets.refusal_now(client_of(scope), may_wait=False)


def _size(message: dict) -> int:
    data = message.get("bytes")
    if data is not None:
        return len(data)
    text = message.get("text") or ""
    # Characters undercount UTF-8 by at most 4x: encode only when it matters.
    if 4 * len(text) <= settings.HERDER_WS_MAX_FRAME:
        return len(text)
    return len(text.encode())


class WebSocketLimits:
    """ASGI middleware: admission and the frame cap for every WebSocket."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            return await self.app(scope, receive, send)
        client = client_of(scope)
        try:
            sockets.acquire(client)
        except TooManyRequests as exc:
            await self._refuse(scope, receive, send, exc)
            return
        try:
            await self.app(scope, self._capped(receive, send), send)
        finally:
            sockets.release(client)

    @staticmethod
    def _capped(receive, send):
        async def capped_receive():
            message = await receive()
            if message["type"] == "websocket.receive" and _size(message) > settings.HERDER_WS_MAX_FRAME:
                try:
                    await send({"type": "websocket.close", "code": CLOSE_TOO_BIG})
                except Exception:  # the server may have closed it already
                    pass
                return {"type": "websocket.disconnect", "code": CLOSE_TOO_BIG}
            return message

        return capped_receive

    @staticmethod
    async def _refuse(scope, receive, send, exc: TooManyRequests) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return  # the client left already
        body = json.dumps({"code": "too_many_requests", "detail": str(exc.detail)})
        if "websocket.http.response" in scope.get("extensions", {}):
            await send(
                {
                    "type": "websocket.http.response.start",
                    "status": 429,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"retry-after", str(exc.wait).encode()),
                    ],
                }
            )
            await send({"type": "websocket.http.response.body", "body": body.encode()})
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps({"type": "error", **json.loads(body)})})
        await send({"type": "websocket.close", "code": CLOSE_TOO_MANY})
