"""Refusing a WebSocket before its upgrade, where the ASGI server can.

The original herder answered a second golem control socket with HTTP 409 and a
golem's connect-to an unknown minion with HTTP 404, before upgrading: its users'
client libraries report a failed handshake with that status. ASGI servers that
implement the `websocket.http.response` extension (uvicorn does) can answer the
same. Others (Daphne) can only accept and then close: there the client gets the
error as a JSON frame `{"type": "error", "code", "detail"}` and the close code
4000 + status, as every other refusal of the herder's sockets.
"""

from __future__ import annotations

import json

HTTP_RESPONSE = "websocket.http.response"


def can_refuse_before_upgrade(scope: dict) -> bool:
    """Whether the server lets the application answer the handshake with an HTTP response."""
    return HTTP_RESPONSE in (scope.get("extensions") or {})


async def refuse_before_upgrade(consumer, status: int, code: str, detail: str) -> None:
    """Refuse a socket that is not accepted yet: HTTP `status` with the herder's JSON
    error body where the server can, else accept, send the error frame and close
    with 4000 + status. `consumer` is a Channels WebSocket consumer."""
    if can_refuse_before_upgrade(consumer.scope):
        body = json.dumps({"code": code, "detail": detail}).encode()
        await consumer.base_send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await consumer.base_send({"type": "websocket.http.response.body", "body": body})
        return
    await consumer.accept()
    await consumer.send(text_data=json.dumps({"type": "error", "code": code, "detail": detail}))
    await consumer.close(code=4000 + status)
