"""POST /token/v1/generate and GET /token/v1/inspect/<token>."""

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.services import token_generate, token_inspect
from herder.admission import client_of, rate_count, rate_spent, request_scope
from herder.errors import BadInput, InvalidToken, TooManyRequests, WrongPassword
from herder.schema import FormText, FormWholeNumber, errors


class TokenGenerateView(APIView):
    """Mint a token for an account (an email or any identifier) when the configured token password is given."""

    class InputSerializer(serializers.Serializer):
        # Strings on purpose: token_generate checks the password before it
        # judges the rest, so a caller without it learns nothing else.
        password = FormText(required=False, allow_blank=True, trim_whitespace=False, default="")
        email = FormText(
            required=False,
            allow_blank=True,
            default="",
            trim_whitespace=False,
            help_text="An email address or any identifier naming the account: 1-254 characters, "
            "no control, format or separator characters, no whitespace at either end.",
        )
        credits = FormWholeNumber(
            required=False, allow_blank=True, default="", help_text="Whole number, at least 0; default 30000."
        )

        class Meta:
            ref_name = "TokenGenerateInput"

    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField()
        email = serializers.CharField(help_text="The account: an email address (lower-cased) or any identifier.")
        credits = serializers.IntegerField(help_text="Credits granted with this token.")

        class Meta:
            ref_name = "TokenGenerated"

    @extend_schema(
        operation_id="token_generate",
        parameters=[InputSerializer],
        request={
            "application/x-www-form-urlencoded": InputSerializer,
            "multipart/form-data": InputSerializer,
            "application/json": InputSerializer,
        },
        responses={
            200: OutputSerializer,
            **errors(
                400,
                401,
                405,
                413,
                415,
                429,
                _400="Bad identifier or credits (`bad_input`), or a body that is not an object.",
                _401="Wrong password (`wrong_password`).",
                _405="No token password is configured (`token_generation_off`), or another method.",
                _429="Too many wrong passwords from this client; see Retry-After.",
            ),
        },
    )
    def post(self, request: Request) -> Response:
        # Guessing slowed: past HERDER_TOKEN_GENERATE_RATE wrong passwords a
        # client is refused before its password is even judged.
        client = client_of(request_scope(request))
        rate_spent("token_generate", client, settings.HERDER_TOKEN_GENERATE_RATE)
        # Form fields or query parameters (the original took both); fields win.
        body = request.data
        if not isinstance(body, dict):  # QueryDict is a dict too
            raise BadInput("The body must be form fields or a JSON object.")
        data = request.query_params.dict()
        data.update(body.dict() if hasattr(body, "dict") else body)
        data = {k: str(v) for k, v in data.items() if isinstance(v, (str, int)) and not isinstance(v, bool)}
        serializer = self.InputSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        try:
            token, email, credits = token_generate(**serializer.validated_data)
        except WrongPassword:
            rate_count("token_generate", client, settings.HERDER_TOKEN_GENERATE_RATE)
            raise
        return Response(self.OutputSerializer({"token": token, "email": email, "credits": credits}).data)


async def token_generate_admit(scope: dict) -> None:
    """For herder/gate.py: the 429 TokenGenerateView would answer at once,
    raised before Django is spent on it."""
    refusal = token_generate_door(scope)
    if refusal is not None:
        raise refusal


def token_generate_door(scope: dict) -> TooManyRequests | None:
    """token_generate_admit's refusal, judged at the door (herder/door.py)."""
    try:
        rate_spent("token_generate", client_of(scope), settings.HERDER_TOKEN_GENERATE_RATE)
    except TooManyRequests as refusal:
        return refusal
    return None


class TokenInspectView(APIView):
    """The email and remaining credits of a token's account."""

    class OutputSerializer(serializers.Serializer):
        token = serializers.CharField()
        email = serializers.CharField(help_text="The account: an email address or any identifier.")
        credits = serializers.IntegerField(source="balance", help_text="The account's remaining credits.")

        class Meta:
            ref_name = "TokenInspected"

    @extend_schema(
        operation_id="token_inspect",
        responses={200: OutputSerializer, **errors(404, 405, _404="The token does not validate (`not_found`).")},
    )
    def get(self, request: Request, token: str) -> Response:
        try:
            account = token_inspect(token)
        except InvalidToken as exc:
            raise NotFound(f"No such token. {exc.detail}") from None
        return Response(
            self.OutputSerializer({"token": token, "email": account.email, "balance": account.balance}).data
        )
