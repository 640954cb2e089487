"""Request bodies capped while they stream (herder/bodycap.py), in process.

The layer is driven the way a server drives it; what it pulls from the
server is counted, so "no more than the cap plus one chunk is read" is
checked exactly. tests/herder/test_limits_served.py does the same through a
real server.
"""

import asyncio
import json

import pytest

from herder.admission import recent_refusals
from herder.bodycap import BodyCap, body_cap, minion_body_cap

CHUNK = 64 * 1024


class Server:
    """Feeds a body in chunks and records what the application answered."""

    def __init__(self, chunks: int, *, chunk: int = CHUNK) -> None:
        self.chunks, self.chunk, self.pulled, self.sent = chunks, chunk, 0, []

    async def receive(self):
        if self.pulled >= self.chunks:
            await asyncio.sleep(3600)  # nothing more: the client went quiet
        self.pulled += 1
        return {"type": "http.request", "body": b"x" * self.chunk, "more_body": self.pulled < self.chunks}

    async def send(self, message):
        self.sent.append(message)

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    def json(self) -> dict:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


def scope(path: str, *headers: tuple[bytes, bytes]) -> dict:
    return {"type": "http", "method": "POST", "path": path, "headers": list(headers), "client": ("127.0.0.1", 1)}


class Echo:
    """Stands for Django: reads the whole body, answers its length and headers."""

    async def __call__(self, scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.scope, self.body = scope, body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def run(app, scope, server):
    asyncio.run(asyncio.wait_for(app(scope, server.receive, server.send), 10))


def test_a_declared_length_over_the_cap_is_refused_before_any_body_is_read(settings):
    server = Server(chunks=10**9)
    run(BodyCap(Echo()), scope("/minion/v1/spawn", (b"content-length", str(8 * 1024**3).encode())), server)

    assert server.status == 413 and server.pulled == 0
    assert server.json()["code"] == "payload_too_large"
    assert (b"connection", b"close") in server.sent[0]["headers"]
    assert recent_refusals()["payload_too_large"] >= 1


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_cap(settings):
    settings.HERDER_MINION_MAX_BYTES = 1024 * 1024
    server = Server(chunks=100 * 16)  # 100 MiB
    app = Echo()
    run(BodyCap(app), scope("/minion/v1/spawn", (b"transfer-encoding", b"chunked")), server)

    assert server.status == 413 and server.json()["code"] == "payload_too_large"
    # Read: the cap, plus the one chunk that passed it.
    assert server.pulled * CHUNK <= minion_body_cap() + CHUNK
    assert not hasattr(app, "body")  # Django never saw it


def test_a_chunked_body_within_the_cap_reaches_django_with_a_length():
    server = Server(chunks=3, chunk=1000)
    app = Echo()
    run(BodyCap(app), scope("/minion/v1/spawn", (b"transfer-encoding", b"chunked")), server)

    assert server.status == 200 and len(app.body) == 3000
    headers = dict(app.scope["headers"])
    assert headers[b"content-length"] == b"3000" and b"transfer-encoding" not in headers


def test_small_routes_have_small_caps(settings):
    assert body_cap("/token/v1/generate") == settings.HERDER_MAX_BODY == 16 * 1024
    assert body_cap("/golem/v1/spawn/x") == settings.HERDER_MAX_BODY
    assert body_cap("/admin/accounts/account/add/") == settings.HERDER_ADMIN_MAX_BODY
    assert body_cap("/daemon/v1/spawn") == minion_body_cap()
    server = Server(chunks=1)
    run(BodyCap(Echo()), scope("/token/v1/generate", (b"content-length", b"20000")), server)
    assert server.status == 413


def test_the_daemon_proxy_is_left_to_stream():
    server = Server(chunks=400)  # 25 MiB, past every cap
    app = Echo()
    run(
        BodyCap(app, skip=("/daemon/v1/proxy/",)),
        scope("/daemon/v1/proxy/web-1/upload", (b"transfer-encoding", b"chunked")),
        server,
    )

    assert server.status == 200 and len(app.body) == 400 * CHUNK


def test_a_bad_content_length_is_a_400():
    server = Server(chunks=1)
    run(BodyCap(Echo()), scope("/minion/v1/spawn", (b"content-length", b"lots")), server)
    assert server.status == 400


@pytest.mark.django_db
def test_a_chunked_form_is_parsed_like_any_other():
    """Through the real application: a chunked form reaches the view as a
    form (here a missing env names the env sent, so the form was read)."""
    from herder.asgi import application

    body = (
        b'--B\r\nContent-Disposition: form-data; name="env"\r\n\r\ncobol\r\n'
        b'--B\r\nContent-Disposition: form-data; name="main.py"\r\n\r\nprint(1)\r\n--B--\r\n'
    )
    server = Server(chunks=0)
    messages = [
        {"type": "http.request", "body": body[:10], "more_body": True},
        {"type": "http.request", "body": body[10:], "more_body": False},
    ]

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    request = {
        **scope(
            "/minion/v1/spawn",
            (b"transfer-encoding", b"chunked"),
            (b"content-type", b"multipart/form-data; boundary=B"),
        ),
        "query_string": b"",
        "server": ("127.0.0.1", 80),
        "scheme": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "raw_path": b"/minion/v1/spawn",
        "root_path": "",
    }
    asyncio.run(asyncio.wait_for(application(request, receive, server.send), 10))

    assert server.status == 400
    assert server.json()["code"] == "unknown_env" and "cobol" in server.json()["detail"]


def test_large_bodies_in_progress_are_bounded_per_client(settings):
    """A second large body from a client already sending one is 429 before
    a byte of it is read; another client's goes on."""
    settings.HERDER_UPLOADS_PER_CLIENT = 1

    async def scenario():
        app = BodyCap(Echo())
        stalled = Server(chunks=1)

        async def one_chunk_then_quiet():
            message = await stalled.receive()
            return dict(message, more_body=True)

        first = asyncio.ensure_future(
            app(scope("/minion/v1/spawn", (b"transfer-encoding", b"chunked")), one_chunk_then_quiet, stalled.send)
        )
        await asyncio.sleep(0.05)
        second = Server(chunks=1)
        await app(scope("/minion/v1/spawn", (b"content-length", b"100000")), second.receive, second.send)
        other = Server(chunks=1, chunk=100000)
        other_scope = scope("/minion/v1/spawn", (b"content-length", b"100000"))
        other_scope["client"] = ("127.0.0.9", 1)
        await app(other_scope, other.receive, other.send)
        first.cancel()
        return second, other

    second, other = asyncio.run(scenario())
    assert second.status == 429 and second.pulled == 0
    assert dict(second.sent[0]["headers"])[b"retry-after"]
    assert other.status == 200
    assert recent_refusals()["upload_per_client"] >= 1


def test_small_bodies_are_not_counted(settings):
    settings.HERDER_UPLOADS_PER_CLIENT = 1
    from herder.bodycap import uploads

    server = Server(chunks=1, chunk=100)
    run(BodyCap(Echo()), scope("/minion/v1/spawn", (b"content-length", b"100")), server)
    assert server.status == 200 and uploads.in_use == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("where", ["none", "bad", "revoked"])
def test_a_large_body_to_a_route_that_needs_a_token_is_not_read_without_a_valid_one(where):
    from django.utils import timezone

    from accounts.middleware import token_refusal
    from accounts.models import Token
    from accounts.services import token_authenticate, token_mint

    query = b""
    if where == "bad":
        query = b"token=not-a-token"
    elif where == "revoked":
        raw = token_mint(email="bodycap@example.org", credits=10)
        Token.objects.filter(jti=token_authenticate(raw)[1].jti).update(revoked=timezone.now())
        query = b"token=" + raw.encode()
    server = Server(chunks=10**6)  # 64 GiB, were it read
    app = Echo()
    cap = BodyCap(app, token_routes=frozenset({"/daemon/v1/spawn"}), token_refusal=token_refusal)
    request = dict(scope("/daemon/v1/spawn", (b"transfer-encoding", b"chunked")), query_string=query)
    run(cap, request, server)

    assert server.status == 401 and server.json()["code"] == "invalid_token"
    assert server.pulled == 0 and not hasattr(app, "body")


@pytest.mark.django_db(transaction=True)
def test_a_large_body_with_a_valid_token_is_read_as_before():
    from accounts.middleware import token_refusal
    from accounts.services import token_mint

    raw = token_mint(email="bodycap@example.org", credits=10)
    server = Server(chunks=3, chunk=1000)
    app = Echo()
    cap = BodyCap(app, token_routes=frozenset({"/daemon/v1/spawn"}), token_refusal=token_refusal)
    request = scope(
        "/daemon/v1/spawn", (b"transfer-encoding", b"chunked"), (b"authorization", b"Bearer " + raw.encode())
    )
    run(cap, request, server)

    assert server.status == 200 and len(app.body) == 3000
