"""The herder's JWT, built on djangorestframework-simplejwt.

Claims: `sub` (the account's email), `jti`, `crd` (credits granted), `iat`,
`exp`, `iss` and `app`. The algorithm, keys, issuer and lifetime come from
settings.SIMPLE_JWT; simplejwt decodes with exactly that one algorithm, so
`alg: none` and HS tokens signed with the public key are refused.
"""

from django.conf import settings
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.tokens import Token

APP = "herder"


class AccountJWT(Token):
    # Checked by simplejwt through TOKEN_TYPE_CLAIM ("app").
    token_type = APP
    lifetime = settings.HERDER_TOKEN_LIFETIME

    def verify(self) -> None:
        """simplejwt's checks (exp, jti, app), plus the herder's own claims."""
        super().verify()
        if not isinstance(self.payload.get("sub"), str) or not self.payload["sub"]:
            raise TokenError("Token has no subject")
        if not isinstance(self.payload.get("crd"), int):
            raise TokenError("Token has no credits claim")
        if "iss" not in self.payload:
            raise TokenError("Token has no issuer")
