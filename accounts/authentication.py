"""Token authentication for DRF views that opt in.

    class DaemonListView(APIView):
        authentication_classes = [TokenAuthentication]

Then `request.user` is the Account and `request.auth` the Token row (its
`jti` names the token). The token comes from `Authorization: Bearer <jwt>`
or the query parameter `?token=<jwt>`. Minion and golem routes stay open:
DEFAULT_AUTHENTICATION_CLASSES is empty.
"""

from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from accounts.models import Account, Token
from accounts.services import token_authenticate
from herder.errors import InvalidToken


def token_from_header(value: str) -> str | None:
    """The JWT of an `Authorization: Bearer <jwt>` value (any case), else None."""
    parts = (value or "").split()
    if len(parts) == 2 and parts[0].lower() == "bearer":
        return parts[1]
    return None


def token_from_request(request: Request) -> str | None:
    """The raw token of a request: the Authorization header first, then ?token=."""
    return token_from_header(request.META.get("HTTP_AUTHORIZATION", "")) or request.query_params.get("token") or None


NO_TOKEN = "A token is required: send Authorization: Bearer <token> or ?token=<token>."


class TokenAuthentication(BaseAuthentication):
    """Requires a valid token: without one the view answers 401 invalid_token."""

    def authenticate(self, request: Request) -> tuple[Account, Token] | None:
        raw = token_from_request(request)
        if raw is None:
            raise InvalidToken(NO_TOKEN)
        return token_authenticate(raw)

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="herder"'


class OptionalTokenAuthentication(TokenAuthentication):
    """Like TokenAuthentication, but a request with no token at all goes on
    unauthenticated (`request.user` is None); a bad token is still a 401."""

    def authenticate(self, request: Request) -> tuple[Account, Token] | None:
        raw = token_from_request(request)
        return None if raw is None else token_authenticate(raw)
