"""How the OpenAPI schema (drf-spectacular) describes token authentication."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    """Two schemes, either one will do: the Bearer header or the `?token=` query
    parameter (what browsers can send where they cannot set a header)."""

    target_class = "accounts.authentication.TokenAuthentication"
    name = ["token", "tokenQuery"]
    match_subclasses = True

    def get_security_requirement(self, auto_schema) -> list[dict]:
        return [{"token": []}, {"tokenQuery": []}]

    def get_security_definition(self, auto_schema) -> list[dict]:
        return [
            {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A herder token: `Authorization: Bearer <token>`.",
            },
            {
                "type": "apiKey",
                "in": "query",
                "name": "token",
                "description": "A herder token as the query parameter `?token=<token>`.",
            },
        ]
