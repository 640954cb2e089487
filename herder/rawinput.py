"""An ASGI layer in front of Django: request framing Django would trip on.

Servers hand the application raw bytes. Two kinds Django does not answer well:
- a Content-Length that is not one whole number (letters, a sign, two different
  values): views that read it (`int(...)`) would fail with a 500. RFC 9110 makes it
  a 400, answered here in the herder's JSON shape;
- a query string with bytes outside printable ASCII: Django answers an empty 400 of its own.
  Browsers percent-encode such bytes; this layer does the same, so the query is
  parsed as usual (invalid UTF-8 then decodes to U+FFFD like any `%FF`).
"""

import json
import re
from urllib.parse import quote

_DIGITS = re.compile(rb"[0-9]{1,19}")
# Every printable ASCII byte stays as it is; the rest is percent-encoded.
_QUERY_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))
_UNSAFE = re.compile(rb"[^\x21-\x7e]")


def bad_length(scope: dict) -> bool:
    """More than one Content-Length, or one that is not a whole number."""
    lengths = {value.strip() for key, value in scope.get("headers", ()) if key.lower() == b"content-length"}
    return len(lengths) > 1 or any(not _DIGITS.fullmatch(value) for value in lengths)


class RawInputGuard:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            if bad_length(scope):
                await _bad_request(send, "The Content-Length header is not one whole number.")
                return
            query = scope.get("query_string", b"")
            if _UNSAFE.search(query):
                scope = {**scope, "query_string": quote(query, safe=_QUERY_SAFE).encode("ascii")}
        return await self.app(scope, receive, send)


async def _bad_request(send, detail: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps({"code": "bad_input", "detail": detail}).encode()})
