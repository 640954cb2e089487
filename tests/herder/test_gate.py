"""Refusals at the door (herder/gate.py): what admission would refuse anyway
is answered before Django; the rest goes on untouched."""

import asyncio
import json

import pytest

from herder.asgi import application
from minions.services import minion_slots


def post(path: str, *headers, query: bytes = b"", client: str = "198.51.100.1"):
    sent = []
    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # the client stays

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [(b"content-length", b"0"), *headers],
        "client": (client, 1),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "root_path": "",
    }
    asyncio.run(asyncio.wait_for(application(scope, receive, send), 10))
    return sent[0]["status"], dict(sent[0]["headers"]), json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


@pytest.fixture
def a_client_at_its_limit(settings):
    settings.HERDER_MINION_MAX_PER_CLIENT = 1
    settings.HERDER_MINION_QUEUE = 0
    minion_slots.acquire("addr:198.51.100.1")
    yield
    minion_slots.release("addr:198.51.100.1")


@pytest.mark.django_db
def test_a_client_at_its_minion_limit_is_refused_at_the_door(a_client_at_its_limit):
    status, headers, body = post("/minion/v1/spawn")
    assert status == 429 and body["code"] == "too_many_requests" and int(headers[b"retry-after"]) >= 1

    # Another client goes on to the view (which finds no env).
    status, _, body = post("/minion/v1/spawn", client="198.51.100.2")
    assert status == 400 and body["code"] == "unknown_env"


@pytest.mark.django_db(transaction=True)
def test_a_token_holder_counts_by_account_and_a_bad_token_by_address(a_client_at_its_limit):
    from accounts.services import token_mint

    token = token_mint(email="gate@herder.test", credits=0)
    status, _, body = post("/minion/v1/spawn", (b"authorization", f"Bearer {token}".encode()))
    assert status == 400 and body["code"] == "unknown_env"  # admitted: the account runs nothing
    assert post("/minion/v1/spawn", (b"authorization", b"Bearer nonsense"))[0] == 429


@pytest.mark.django_db
def test_a_client_out_of_password_guesses_is_refused_at_the_door(settings):
    from herder.admission import rate_count

    settings.HERDER_TOKEN_GENERATE_RATE = "1/h"
    settings.HERDER_TOKEN_PASSWORD = "x"
    rate_count("token_generate", "addr:198.51.100.1", "1/h")
    status, headers, body = post("/token/v1/generate")
    assert status == 429 and headers[b"retry-after"]
    assert post("/token/v1/generate", client="198.51.100.2")[0] == 401
