"""Refusals at the door: a request that admission would refuse anyway is
answered 429 here, before Django, its middleware and its thread hops.

A Django request costs the herder a few milliseconds of CPU even when the
view only says 429; a client flooding one route would spend the event loop
everyone shares. Each route names a check, `check(scope) -> TooManyRequests |
None`, that takes nothing (no slot, no count) and only says what the view
would answer; the view still decides every request that passes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from herder.errors import TooManyRequests

Check = Callable[[dict], "TooManyRequests | None"]


async def send_refusal(send, refusal: TooManyRequests) -> None:
    """Answer a 429 from an ASGI layer, in the handler's shape."""
    body = json.dumps({"code": refusal.default_code, "detail": str(refusal.detail)}).encode()
    await send({"type": "http.response.start", "status": refusal.status_code, "headers": [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"retry-after", str(refusal.wait).encode()),
        # The body is not read: the connection cannot be reused.
        (b"connection", b"close"),
        (b"access-control-allow-origin", b"*"),
    ]})
    await send({"type": "http.response.body", "body": body})


class Gate:
    """The ASGI layer: `routes` maps an exact path to its check."""

    def __init__(self, app, *, routes: dict[str, Check]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("method") == "POST":
            check = self.routes.get(scope["path"])
            refusal = check(scope) if check is not None else None
            if refusal is not None:
                return await send_refusal(send, refusal)
        return await self.app(scope, receive, send)
