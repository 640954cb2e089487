"""Refusals at the door: answers the HTTP server writes itself (429s, and a
401 for a token route asked without any), before any ASGI task, Django or
WebSocket handshake library is spent on the request.

Under a flood nearly every request is a refusal: a client past its sockets
reconnecting in a loop, past its minion runs posting again at once, past its
password guesses. Through the ASGI layers each cost the herder's one event
loop 0.6 ms of CPU (a refused WebSocket: the handshake parsed by `websockets`,
a task, the layers, a log line), and every well-behaved request waited behind
them. The server's protocol (herder/servers.py) asks the door once the
headers are in; the door asks the same judges the layers behind it use
(herder/wslimits.py, herder/gate.py's admits) whether they would surely refuse
now, and when they would, answers in the layers' shape: status, Retry-After,
the JSON error, X-Request-Id, the metrics and the (summarised) log line.

A judge that cannot tell without awaiting (a token to look up) says None and
the request goes on to the layers as before: the door only ever answers what
they would have answered.

A client refused more than HERDER_REFUSAL_DELAY_AFTER times within a second
is retrying without heeding Retry-After: its next refusals are held back (up
to HERDER_REFUSAL_DELAY, never past their Retry-After), the connection unread
meanwhile. A client that waits for each answer, as nearly all do, then asks
once per delay on each connection instead of hundreds of times a second. At
most HERDER_REFUSAL_DELAY_MAX_HELD connections are held; past that, and for
a client within its pace, the answer is written at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from email.utils import formatdate
from http import HTTPStatus

from django.conf import settings
from rest_framework.exceptions import APIException

from herder.admission import client_address

logger = logging.getLogger(__name__)

# The refusal for a request's scope (type, method, path, query_string,
# client, headers), or None: it may go on. A 429 (TooManyRequests) carries
# its Retry-After; a 401 (InvalidToken) is answered with WWW-Authenticate.
Judge = Callable[[dict], "APIException | None"]


class Door:
    """`http`: an exact path (POST) to its judge; `websocket`: the judge of
    every handshake; `reaches(scope)`: whether an HTTP request would reach the
    judges' layer at all (the layers in front may answer it otherwise)."""

    def __init__(
        self,
        *,
        http: dict[str, Judge],
        websocket: Judge | None = None,
        reaches: Callable[[dict], bool] = lambda scope: True,
    ) -> None:
        self.http = http
        self.websocket = websocket
        self.reaches = reaches
        self.pace = Pace()
        self.held = 0  # connections whose answer is held back now

    def answer(self, scope: dict) -> tuple[bytes, float] | None:
        """The whole HTTP answer to write before closing, and how many seconds
        to hold it back first (call `hold()`, then `let_go()` once written or
        lost); or None: the request goes on."""
        started = time.perf_counter()
        if scope["type"] == "websocket":
            judge = self.websocket
        else:
            judge = self.http.get(scope["path"]) if scope["method"] == "POST" else None
            if judge is not None and not self.reaches(scope):
                return None
        if judge is None:
            return None
        try:
            refusal = judge(scope)
        except Exception:
            # (The cache down, say.) The layers behind judge again and answer it.
            logger.exception("the door's judge of %s failed", scope["path"])
            return None
        if refusal is None:
            return None
        from herder.requestlog import refused_at_door  # the request log's own bookkeeping

        rid = refused_at_door(scope, started, refusal.status_code)
        return _response(refusal, rid, websocket=scope["type"] == "websocket"), self._delay(scope, refusal)

    def _delay(self, scope: dict, refusal: APIException) -> float:
        longest = settings.HERDER_REFUSAL_DELAY
        if not longest or self.held >= settings.HERDER_REFUSAL_DELAY_MAX_HELD:
            return 0.0
        if self.pace.count(client_address(scope), time.monotonic()) <= settings.HERDER_REFUSAL_DELAY_AFTER:
            return 0.0
        return min(longest, getattr(refusal, "wait", longest))

    def hold(self) -> bool:
        """Count one more held connection; False when there is no room."""
        if self.held >= settings.HERDER_REFUSAL_DELAY_MAX_HELD:
            return False
        self.held += 1
        return True

    def let_go(self) -> None:
        self.held -= 1


class Pace:
    """Refusals per client address in the current second (a fixed window).
    Keys are bounded: past `max_keys` in one second (a flood from many
    addresses) the newcomers share one count, and are held back together."""

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._second = 0
        self._counts: Counter[str] = Counter()

    def count(self, client: str, now: float) -> int:
        """Count one refusal of `client`; its count in this second so far."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._counts.clear()
        if client not in self._counts and len(self._counts) >= self.max_keys:
            client = "*"
        self._counts[client] += 1
        return self._counts[client]


def _response(refusal: APIException, rid: str, *, websocket: bool) -> bytes:
    status = HTTPStatus(refusal.status_code)
    body = json.dumps({"code": refusal.default_code, "detail": str(refusal.detail)}).encode()
    headers = [
        f"HTTP/1.1 {status.value} {status.phrase}".encode(),
        b"date: " + formatdate(usegmt=True).encode(),
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        # The body (if any) is not read: the connection cannot be reused.
        b"connection: close",
        b"x-request-id: " + rid.encode(),
    ]
    if hasattr(refusal, "wait"):
        headers.append(b"retry-after: " + str(refusal.wait).encode())
    if status == HTTPStatus.UNAUTHORIZED:
        headers.append(b'www-authenticate: Bearer realm="herder"')
    if not websocket:
        headers.append(b"access-control-allow-origin: *")  # as herder/gate.py's refusal
    return b"\r\n".join(headers) + b"\r\n\r\n" + body
