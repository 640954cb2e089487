"""Admission at the door, before Django.

A Django request costs the herder a few milliseconds of CPU even when its
view only says 429, and a thread for as long as it lasts (Django runs each
request's sync middleware in a thread of the request's own). So a route may
name an `admit(scope)` coroutine here, awaited before the request goes on:

- it raises TooManyRequests: answered 429 at once, nothing else spent;
- it waits (for a slot, in a bounded queue): the request waits here, holding
  no thread and, for a large body, not even its body (left unread in the
  socket); a small body is read first, so that a client that disconnects
  while waiting is seen at once and leaves the queue;
- it returns None or a callable, called when the request ends (to give
  back what it took, unless the view handed it on).

What admit() leaves in the scope (a ticket for a slot) is the view's to use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable

from herder.errors import TooManyRequests

Admit = Callable[[dict], Awaitable["Callable[[], None] | None"]]
# A body up to this size is read before waiting, to watch for the client leaving.
WATCHED_BODY = 64 * 1024
# Where the time admission took (its wait for a slot) is left in the scope, ms.
ADMIT_MS = "herder.admit_ms"


async def send_refusal(send, refusal: TooManyRequests) -> None:
    """Answer a 429 from an ASGI layer, in the handler's shape."""
    body = json.dumps({"code": refusal.default_code, "detail": str(refusal.detail)}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status_code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(refusal.wait).encode()),
                # The body is not read: the connection cannot be reused.
                (b"connection", b"close"),
                (b"access-control-allow-origin", b"*"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _small_body(scope: dict) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return value.isdigit() and int(value) <= WATCHED_BODY
    return False


class Gate:
    """The ASGI layer: `routes` maps an exact path (POST) to its admit()."""

    def __init__(self, app, *, routes: dict[str, Admit]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope, receive, send):
        admit = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if admit is None:
            return await self.app(scope, receive, send)

        # Read a small body now; then a message while waiting means the client left.
        replay: list[dict] = []
        if _small_body(scope):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                replay.append(message)
                if not message.get("more_body"):
                    break
        waited_from = time.perf_counter()
        admission = asyncio.ensure_future(admit(scope))
        listener = asyncio.ensure_future(receive()) if replay else None
        try:
            if listener is not None:
                await asyncio.wait({admission, listener}, return_when=asyncio.FIRST_COMPLETED)
                if not admission.done():
                    # The client left while waiting: out of the queue.
                    admission.cancel()
                    with contextlib.suppress(asyncio.CancelledError, TooManyRequests):
                        await admission
                    return
            try:
                release = await admission
            except TooManyRequests as refusal:
                return await send_refusal(send, refusal)
            scope[ADMIT_MS] = (time.perf_counter() - waited_from) * 1000
        except BaseException:
            # Cancelled ourselves (the server is stopping): give back a slot got meanwhile.
            if admission.done() and not admission.cancelled() and admission.exception() is None:
                if admission.result() is not None:
                    admission.result()()
            admission.cancel()
            if listener is not None:
                listener.cancel()
            raise

        pending = listener

        async def downstream():
            nonlocal pending
            if replay:
                return replay.pop(0)
            if pending is not None:
                task, pending = pending, None
                return await task
            return await receive()

        try:
            return await self.app(scope, downstream if (replay or listener) else receive, send)
        finally:
            if release is not None:
                release()
            if listener is not None and not listener.done():
                listener.cancel()
