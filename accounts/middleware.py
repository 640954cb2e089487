"""Token authentication for Channels consumers.

Wrapped around the WebSocket router in herder/asgi.py. For every WebSocket it
sets `scope["account"]` and `scope["token"]` (None without a valid token) and
`scope["token_error"]` (why a given token was refused, else None). The token
comes from `?token=<jwt>` (browsers cannot set headers on WebSockets) or an
`Authorization: Bearer <jwt>` header. Consumers that need an account refuse
in `connect` with close code 4401; the others ignore it.
"""

from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware

from accounts.authentication import NO_TOKEN, token_from_header
from accounts.services import token_authenticate
from herder.errors import InvalidToken


def token_from_scope(scope: dict) -> str | None:
    """The raw token of a connection: the Authorization header first, then ?token=."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            raw = token_from_header(value.decode("latin-1"))
            if raw:
                return raw
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    values = query.get("token")
    return values[-1] if values else None


@database_sync_to_async
def _authenticate(raw: str):
    return token_authenticate(raw)


async def token_refusal(scope: dict) -> str | None:
    """Why a request that needs a token may not go on (none, or not valid),
    or None (herder/bodycap.py asks before reading a large body)."""
    raw = token_from_scope(scope)
    if not raw:
        return NO_TOKEN
    try:
        await _authenticate(raw)
    except InvalidToken as exc:
        return str(exc.detail)
    return None


class TokenAuthMiddleware(BaseMiddleware):
    async def __call__(self, scope, receive, send):
        scope = dict(scope, account=None, token=None, token_error=None)
        raw = token_from_scope(scope)
        if raw:
            try:
                scope["account"], scope["token"] = await _authenticate(raw)
            except InvalidToken as exc:
                scope["token_error"] = str(exc.detail)
        return await super().__call__(scope, receive, send)
