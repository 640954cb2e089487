"""POST /token/v1/generate and GET /token/v1/inspect/<token>."""

from datetime import timedelta

import jwt
import pytest

from accounts.models import Account, CreditEntry, Token
from accounts.services import credits_spend, token_mint, token_revoke
from tests.accounts.conftest import ALICE_CREDITS, ALICE_EMAIL

pytestmark = pytest.mark.django_db

PASSWORD = "s3cret-pässword"


@pytest.fixture
def password(settings) -> str:
    settings.HERDER_TOKEN_PASSWORD = PASSWORD
    return PASSWORD


def nothing_minted() -> bool:
    return not Account.objects.exists() and not Token.objects.exists() and not CreditEntry.objects.exists()


def test_generate_is_off_without_a_configured_password(anon_client, settings):
    settings.HERDER_TOKEN_PASSWORD = ""

    response = anon_client.post("/token/v1/generate", {"password": "", "email": "carol@herder.test"})

    assert response.status_code == 405
    assert response.json()["code"] == "token_generation_off"
    assert nothing_minted()


@pytest.mark.parametrize("given", ["", "wrong", PASSWORD[:-1], PASSWORD + " ", PASSWORD.upper()])
def test_generate_refuses_a_wrong_password(anon_client, password, given):
    response = anon_client.post("/token/v1/generate", {"password": given, "email": "carol@herder.test"})

    assert response.status_code == 401
    assert response.json() == {"code": "wrong_password", "detail": "Wrong token password."}
    assert nothing_minted()


def test_generate_refuses_a_missing_password(anon_client, password):
    response = anon_client.post("/token/v1/generate", {"email": "carol@herder.test"})

    assert response.status_code == 401 and nothing_minted()


def test_generate_with_the_password_in_form_fields(anon_client, password):
    response = anon_client.post(
        "/token/v1/generate", {"password": password, "email": "carol@herder.test", "credits": "1234"}
    )

    assert response.status_code == 200
    body = response.json()
    assert body["email"] == "carol@herder.test" and body["credits"] == 1234
    assert jwt.decode(body["token"], options={"verify_signature": False})["crd"] == 1234
    assert Account.objects.get(email="carol@herder.test").balance == 1234


def test_generate_with_query_parameters(anon_client, password):
    response = anon_client.post(f"/token/v1/generate?password={password}&email=carol@herder.test")

    assert response.status_code == 200
    assert response.json()["credits"] == 30000
    assert Account.objects.get(email="carol@herder.test").balance == 30000


def test_generate_with_url_encoded_form_fields(anon_client, password):
    response = anon_client.post(
        "/token/v1/generate",
        f"password={password}&email=carol%40herder.test&credits=7",
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 200 and response.json()["credits"] == 7


@pytest.mark.parametrize(
    "fields,code",
    [
        ({"email": "carol\x00"}, "bad_input"),
        ({"email": " carol"}, "bad_input"),
        ({"email": "c" * 255}, "bad_input"),
        ({"email": ""}, "bad_input"),
        ({"email": "carol@herder.test", "credits": "-1"}, "bad_input"),
        ({"email": "carol@herder.test", "credits": "lots"}, "bad_input"),
    ],
)
def test_generate_refuses_bad_input_and_mints_nothing(anon_client, password, fields, code):
    response = anon_client.post("/token/v1/generate", {"password": password, **fields})

    assert response.status_code == 400
    assert response.json()["code"] == code and response.json()["detail"]
    assert nothing_minted()


def test_generate_answers_only_post(anon_client, password):
    response = anon_client.get("/token/v1/generate", {"password": password, "email": "carol@herder.test"})

    assert response.status_code == 405 and nothing_minted()


def test_inspect_answers_the_accounts_remaining_credits(anon_client, alice, alice_token):
    credits_spend(account=alice, amount=100, subject="web")
    token_mint(email=ALICE_EMAIL, credits=50)

    response = anon_client.get(f"/token/v1/inspect/{alice_token}")

    assert response.status_code == 200
    assert response.json() == {"token": alice_token, "email": ALICE_EMAIL, "credits": ALICE_CREDITS - 100 + 50}


@pytest.mark.parametrize("raw", ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
def test_inspect_answers_404_for_a_token_that_does_not_validate(anon_client, raw):
    response = anon_client.get(f"/token/v1/inspect/{raw}")

    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_inspect_answers_404_for_a_revoked_token(anon_client, alice, alice_token):
    token_revoke(token=Token.objects.get(account=alice))

    response = anon_client.get(f"/token/v1/inspect/{alice_token}")

    assert response.status_code == 404 and "revoked" in response.json()["detail"]


def test_inspect_answers_404_for_an_expired_token(anon_client, db):
    raw = token_mint(email="carol@herder.test", credits=5, lifetime=timedelta(seconds=1))
    Token.objects.update(expires="2000-01-01T00:00:00Z")  # as if time had passed; the JWT check is tested apart

    assert anon_client.get(f"/token/v1/inspect/{raw}").status_code == 404


def test_token_routes_allow_any_origin(anon_client, alice_token):
    response = anon_client.get(f"/token/v1/inspect/{alice_token}", HTTP_ORIGIN="https://webstrates.example")

    assert response["Access-Control-Allow-Origin"] == "*"


@pytest.mark.urls("tests.accounts.urls")  # holds a view with TokenAuthentication
def test_openapi_schema_lists_the_token_routes_and_the_bearer_scheme(anon_client):
    schema = anon_client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json").json()

    assert "post" in schema["paths"]["/token/v1/generate"]
    assert "get" in schema["paths"]["/token/v1/inspect/{token}"]
    assert schema["components"]["securitySchemes"]["token"]["scheme"] == "bearer"


def test_generate_takes_a_json_body_too(anon_client, password):
    response = anon_client.post(
        "/token/v1/generate", {"password": password, "email": "carol@herder.test", "credits": 12}, format="json"
    )

    assert response.status_code == 200 and response.json()["credits"] == 12
