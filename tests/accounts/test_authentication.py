"""Every kind of bad token is refused with 401, over HTTP and WebSocket."""

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from asgiref.sync import async_to_sync
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from django.conf import settings
from django.urls import path

from accounts.middleware import TokenAuthMiddleware
from accounts.models import Token
from accounts.services import token_authenticate, token_revoke
from herder.errors import InvalidToken
from tests.accounts.conftest import ALICE_EMAIL

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.accounts.urls")]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def payload_of(raw: str) -> dict:
    return jwt.decode(raw, options={"verify_signature": False})


def sign(payload: dict, *, key=None, algorithm: str = "RS512") -> str:
    return jwt.encode(payload, key or settings.HERDER_TOKEN_PRIVATE_KEY, algorithm=algorithm)


def expired(raw: str) -> str:
    # The real key and a minted jti: only the expiry is wrong.
    return sign({**payload_of(raw), "iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600})


def alg_none(raw: str) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{b64(json.dumps(payload_of(raw)).encode())}."


def hs512_with_public_key(raw: str) -> str:
    # The classic key-confusion forgery: HMAC keyed with the (public) verifying key.
    header = b64(json.dumps({"alg": "HS512", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload_of(raw)).encode())
    mac = hmac.new(settings.HERDER_TOKEN_PUBLIC_KEY.encode(), f"{header}.{body}".encode(), hashlib.sha512)
    return f"{header}.{body}.{b64(mac.digest())}"


def other_key(raw: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return sign(payload_of(raw), key=pem)


def tampered(raw: str) -> str:
    header, _, signature = raw.split(".")
    body = b64(json.dumps({**payload_of(raw), "sub": "mallory@herder.test"}).encode())
    return f"{header}.{body}.{signature}"


def truncated_signature(raw: str) -> str:
    return raw[:-8]


def rs256(raw: str) -> str:
    return sign(payload_of(raw), algorithm="RS256")


def wrong_issuer(raw: str) -> str:
    return sign({**payload_of(raw), "iss": "someone-else"})


def wrong_app(raw: str) -> str:
    return sign({**payload_of(raw), "app": "other-app"})


def without_credits_claim(raw: str) -> str:
    return sign({k: v for k, v in payload_of(raw).items() if k != "crd"})


def never_minted(raw: str) -> str:
    return sign({**payload_of(raw), "jti": "0" * 32})


def other_subject(raw: str) -> str:
    return sign({**payload_of(raw), "sub": "mallory@herder.test"})


def garbage(raw: str) -> str:
    return "not-a-jwt"


def revoked(raw: str) -> str:
    token_revoke(token=Token.objects.get(jti=payload_of(raw)["jti"]))
    return raw


BAD_TOKENS = [
    expired,
    alg_none,
    hs512_with_public_key,
    other_key,
    tampered,
    truncated_signature,
    rs256,
    wrong_issuer,
    wrong_app,
    without_credits_claim,
    never_minted,
    other_subject,
    garbage,
    revoked,
]


@pytest.mark.parametrize("make_bad", BAD_TOKENS)
def test_authenticate_refuses_bad_tokens(alice_token, make_bad):
    with pytest.raises(InvalidToken):
        token_authenticate(make_bad(alice_token))


@pytest.mark.parametrize("make_bad", BAD_TOKENS)
def test_views_answer_401_for_bad_tokens(anon_client, alice_token, make_bad):
    response = anon_client.get("/test/whoami", HTTP_AUTHORIZATION=f"Bearer {make_bad(alice_token)}")

    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_views_accept_a_bearer_header(alice_client, alice_token):
    response = alice_client.get("/test/whoami")

    assert response.status_code == 200
    assert response.json() == {"email": ALICE_EMAIL, "jti": payload_of(alice_token)["jti"]}


def test_the_bearer_keyword_is_case_insensitive(anon_client, alice_token):
    response = anon_client.get("/test/whoami", HTTP_AUTHORIZATION=f"bearer {alice_token}")

    assert response.status_code == 200


def test_views_accept_a_token_query_parameter(anon_client, alice_token):
    response = anon_client.get("/test/whoami", {"token": alice_token})

    assert response.status_code == 200 and response.json()["email"] == ALICE_EMAIL


def test_views_that_opt_in_refuse_requests_without_a_token(anon_client):
    response = anon_client.get("/test/whoami")

    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


def test_optional_authentication_lets_anonymous_requests_in_but_not_bad_tokens(anon_client, alice_token):
    assert anon_client.get("/test/maybe").json() == {"email": None}
    assert anon_client.get("/test/maybe", {"token": alice_token}).json() == {"email": ALICE_EMAIL}
    assert anon_client.get("/test/maybe", {"token": garbage(alice_token)}).status_code == 401


def test_routes_without_token_authentication_stay_open(anon_client):
    # Minion routes are public: a bad token there is simply ignored.
    response = anon_client.post("/minion/v1/spawn", {"env": "cobol"}, HTTP_AUTHORIZATION="Bearer junk")

    assert response.status_code == 400 and response.json()["code"] == "unknown_env"


class WhoConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        await self.accept()
        if self.scope["account"] is None:
            await self.send_json(
                {
                    "type": "error",
                    "code": "invalid_token",
                    "detail": self.scope["token_error"] or "A token is required.",
                }
            )
            await self.close(code=4401)
            return
        await self.send_json({"email": self.scope["account"].email, "jti": self.scope["token"].jti})


def communicator(query: str = "", headers: list | None = None) -> WebsocketCommunicator:
    app = TokenAuthMiddleware(URLRouter([path("ws/who", WhoConsumer.as_asgi())]))
    return WebsocketCommunicator(app, f"/ws/who{query}", headers=headers or [])


async def exchange(comm: WebsocketCommunicator) -> tuple[dict, dict | None]:
    connected, _ = await comm.connect()
    assert connected
    first = await comm.receive_json_from()
    closed = await comm.receive_output() if "code" in first else None
    await comm.disconnect()
    return first, closed


def talk(comm: WebsocketCommunicator) -> tuple[dict, dict | None]:
    return async_to_sync(exchange)(comm)


@pytest.mark.django_db(transaction=True)
def test_websockets_take_the_token_from_the_query(alice_token):
    first, _ = talk(communicator(f"?token={alice_token}"))

    assert first == {"email": ALICE_EMAIL, "jti": payload_of(alice_token)["jti"]}


@pytest.mark.django_db(transaction=True)
def test_websockets_take_the_token_from_a_bearer_header(alice_token):
    first, _ = talk(communicator(headers=[(b"authorization", f"Bearer {alice_token}".encode())]))

    assert first["email"] == ALICE_EMAIL


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("make_bad", [expired, alg_none, hs512_with_public_key, revoked, garbage])
def test_websockets_with_bad_tokens_have_no_account_and_are_closed_4401(alice_token, make_bad):
    first, closed = talk(communicator(f"?token={make_bad(alice_token)}"))

    assert first["code"] == "invalid_token" and first["detail"] != "A token is required."
    assert closed == {"type": "websocket.close", "code": 4401}


@pytest.mark.django_db(transaction=True)
def test_websockets_without_a_token_have_no_account():
    first, closed = talk(communicator())

    assert first["detail"] == "A token is required." and closed["code"] == 4401
