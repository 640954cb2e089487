"""Every bad input is a 4xx: a walk over every HTTP route with hostile requests.

The routes come from the URL resolver and from the OpenAPI schema, so a new route is
walked without touching this file. Each request goes through the whole ASGI
application (herder.asgi.application: the proxy's prefix router, static files, Django,
DRF), as a server would hand it over, with raw bytes in the path, headers and body.
Nothing answers 500, and every error (other than the admin's and the docs' HTML pages)
is JSON {"code", "detail"}.

The herder is pointed at a Docker socket nobody listens on, so a request that happens
to be valid (a golem spawn for a well-formed id, a minion with an env) fails fast with
503 runtime_unavailable and no container is ever started by the walk.
"""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import unquote

import pytest
from asgiref.testing import ApplicationCommunicator
from django.urls import URLPattern, URLResolver, get_resolver

from accounts.services import token_mint
from daemons.models import Daemon
from golems.models import Golem
from minions.models import MinionRun

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "walk-password"
# Not an error the walk can cause by bad input: what a valid request meets with no engine.
ENGINE_DOWN = {"runtime_unavailable", "image_missing"}
# HTML by design (Django's admin, Swagger UI); there only "no 500" is checked.
HTML_PREFIXES = ("/admin/", "/api/docs/")


# --- The ASGI driver ---------------------------------------------------------


class Answer:
    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:200]!r}>"


async def _call(app, method: str, raw_path: bytes, query: bytes, headers: list, body: bytes) -> Answer:
    # As uvicorn builds it: `path` is the percent-decoded raw path (UTF-8, errors replaced).
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("latin-1")),
        "raw_path": raw_path,
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    comm = ApplicationCommunicator(app, scope)
    await comm.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await comm.receive_output(30)
    assert start["type"] == "http.response.start", start
    chunks = []
    while True:
        message = await comm.receive_output(30)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await comm.wait(5)
    return Answer(start["status"], dict(start.get("headers", [])), b"".join(chunks))


def request(
    method: str,
    path: str | bytes,
    *,
    query: bytes = b"",
    headers: list | None = None,
    body: bytes = b"",
    content_type: bytes | None = None,
) -> Answer:
    from herder.asgi import application

    raw_path = path if isinstance(path, bytes) else path.encode()
    headers = list(headers or [])
    names = {k.lower() for k, _ in headers}
    if b"host" not in names:
        headers.append((b"host", b"127.0.0.1:8000"))
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if body and b"content-length" not in names:
        headers.append((b"content-length", str(len(body)).encode()))
    return asyncio.run(_call(application, method, raw_path, query, headers, body))


def check(answer: Answer, what: str) -> None:
    """No 500, a 4xx for everything but a valid request meeting no engine, and JSON errors."""
    assert answer.status < 500 or answer.status == 503, f"{what}: {answer}"
    if answer.status < 400 or what.split()[1].startswith(HTML_PREFIXES) or what.startswith("HEAD "):
        return
    try:
        error = json.loads(answer.body)
    except ValueError:
        raise AssertionError(f"{what}: an error that is not JSON: {answer}") from None
    if what.split()[1].split("?")[0] == "/readyz" and answer.status == 503:
        # The readiness probe, with no engine: the error names each check (herder/health.py).
        assert error["code"] == "not_ready" and set(error) == {"code", "detail", "checks"}, f"{what}: {answer}"
        return
    assert isinstance(error, dict) and set(error) == {"code", "detail"}, f"{what}: {answer}"
    assert isinstance(error["code"], str) and error["code"] and isinstance(error["detail"], str), f"{what}: {answer}"
    if answer.status == 503:
        assert error["code"] in ENGINE_DOWN, f"{what}: {answer}"


# --- The routes --------------------------------------------------------------


def _walk_resolver(patterns, prefix: str = "") -> list[str]:
    routes = []
    for pattern in patterns:
        text = prefix + str(pattern.pattern).lstrip("^").rstrip("$").replace("\\Z", "")
        if isinstance(pattern, URLResolver):
            if text.startswith("admin/"):
                routes.append("admin/")  # Django's own; its pages are walked below
                continue
            routes += _walk_resolver(pattern.url_patterns, text)
        elif isinstance(pattern, URLPattern):
            routes.append(text)
    return routes


def _template(route: str) -> str:
    """'golem/v1/spawn/<str:webstrate>' -> '/golem/v1/spawn/{}' (one placeholder per parameter)."""
    return "/" + re.sub(r"<(?:\w+:)?\w+>|\{\w+\}", "{}", route.lstrip("/"))


def all_routes() -> list[str]:
    """Every HTTP route as a template, from the URL resolver and the OpenAPI schema."""
    from_resolver = {_template(r) for r in _walk_resolver(get_resolver().url_patterns)}
    schema = json.loads(request("GET", "/api/schema/", query=b"format=json").body)
    from_schema = {_template(p) for p in schema["paths"]}
    assert from_schema <= from_resolver, f"schema paths the resolver does not know: {from_schema - from_resolver}"
    # The proxy is an ASGI app of its own, in front of Django.
    return sorted(from_resolver | from_schema | {"/daemon/v1/proxy/{}/", "/daemon/v1/proxy/{}/{}"})


def test_the_walk_covers_every_route_the_brief_names():
    routes = all_routes()
    for expected in (
        "/minion/v1/spawn",
        "/token/v1/generate",
        "/token/v1/inspect/{}",
        "/daemon/v1/spawn",
        "/daemon/v1/ls",
        "/daemon/v1/kill/{}",
        "/golem/v1/spawn/{}",
        "/golem/v1/reset/{}",
        "/golem/v1/kill/{}",
        "/golem/v1/ls",
        "/",
        "/api/schema/",
        "/daemon/v1/proxy/{}/",
    ):
        assert expected in routes


# --- The hostile table -------------------------------------------------------

# A webstrate id, a daemon name, a token: well-formed, so the request goes as far as it can.
GOOD_PARAM = "herder-test-walk"
PARAMS = [
    GOOD_PARAM,
    "a" * 5000,
    "%00",
    "a%00b",
    "%C3%BC",
    "%F0%9F%92%A9",
    "..",
    ".",
    "a.b",
    "%2e%2e",
    "%ff%fe",
    "%0d%0aX-Injected:%201",
    "a%2fb",
    "-",
    "%20",
    "'%22%3Cscript%3E",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "FOO"]

_nested = b"[" * 100_000 + b"]" * 100_000
BODIES: list[tuple[str, bytes | None, bytes]] = [
    ("json list", b"application/json", b'[1, "a", {"b": null}]'),
    ("json empty list", b"application/json", b"[]"),
    ("json string", b"application/json", b'"email@example.org"'),
    ("json number", b"application/json", b"12345678901234567890"),
    ("json float", b"application/json", b"1e999"),
    ("json null", b"application/json", b"null"),
    ("json true", b"application/json", b"true"),
    (
        "json nested",
        b"application/json",
        json.dumps({"password": PASSWORD, "email": {"a": {"b": [1, {}]}}, "credits": [1], "env": {"x": 1}}).encode(),
    ),
    (
        "json fields of other types",
        b"application/json",
        json.dumps({"password": PASSWORD, "email": None, "credits": 1.5, "name": True, "image": 3}).encode(),
    ),
    ("json deep", b"application/json", _nested),
    ("json broken", b"application/json", b'{"email": '),
    ("json invalid utf-8", b"application/json", b'{"email": "\xff\xfe"}'),
    ("json utf-16", b"application/json; charset=utf-16", '{"a": 1}'.encode("utf-16")),
    ("json unknown charset", b"application/json; charset=klingon", b'{"a": 1}'),
    ("form unknown charset", b"application/x-www-form-urlencoded; charset=klingon", b"email=a"),
    ("form invalid utf-8", b"application/x-www-form-urlencoded", b"email=%ff%fe&password=\xff&\xff=1"),
    ("form nul", b"application/x-www-form-urlencoded", b"email=a%00b&password=%00&env=%00&name=%00"),
    (
        "form huge value",
        b"application/x-www-form-urlencoded",
        b"password=" + PASSWORD.encode() + b"&email=" + b"a" * 3_000_000,
    ),
    ("form many fields", b"application/x-www-form-urlencoded", b"&".join(b"f%d=1" % i for i in range(2000))),
    (
        "form password, odd credits",
        b"application/x-www-form-urlencoded",
        b"password=" + PASSWORD.encode() + b"&email=a%40b.example&credits=1e3",
    ),
    (
        "form password, huge credits",
        b"application/x-www-form-urlencoded",
        b"password=" + PASSWORD.encode() + b"&email=a%40b.example&credits=" + b"9" * 5000,
    ),
    ("form daemon", b"application/x-www-form-urlencoded", b"name=web&image=x&ports=%5B%22a%22%5D"),
    ("form daemon ports", b"application/x-www-form-urlencoded", b"name=web&image=x&ports=" + b"[" * 5000),
    ("form minion", b"application/x-www-form-urlencoded", b"env=python&main.py=print(1)&output=%00"),
    ("multipart broken boundary", b"multipart/form-data; boundary=xyz", b"--abc\r\nnot a part\r\n--abc--\r\n"),
    ("multipart no boundary", b"multipart/form-data", b"--x\r\n\r\n"),
    ("multipart bad boundary", b"multipart/form-data; boundary=" + b"\xff" * 80, b"--\xff\r\n"),
    (
        "multipart truncated",
        b"multipart/form-data; boundary=b",
        b'--b\r\nContent-Disposition: form-data; name="env"\r\n\r\npython',
    ),
    (
        "multipart odd disposition",
        b"multipart/form-data; boundary=b",
        b'--b\r\nContent-Disposition: form-data; name="\xff\x00"; filename="../\x00"\r\n\r\nx\r\n--b--\r\n',
    ),
    ("text", b"text/plain", b"hello"),
    ("xml", b"application/xml", b"<a/>"),
    ("odd content type", b";;;=; =", b"x"),
    ("empty json", b"application/json", b""),
    ("empty, no content type", None, b""),
    ("bytes, no content type", None, b"\x00\xff" * 10),
]

HEADERS: list[tuple[str, list]] = [
    ("bearer alone", [(b"authorization", b"Bearer")]),
    ("bearer two words", [(b"authorization", b"Bearer a b")]),
    ("basic", [(b"authorization", b"Basic YTpi")]),
    ("bearer garbage", [(b"authorization", b"Bearer eyJhbGciOiJub25lIn0.e30.")]),
    ("bearer latin-1", [(b"authorization", b"Bearer \xff\xfe")]),
    ("bearer huge", [(b"authorization", b"Bearer " + b"a" * 100_000)]),
    ("huge header", [(b"x-filler", b"x" * 200_000)]),
    ("many headers", [(b"x-h%d" % i, b"v") for i in range(500)]),
    ("content-length letters", [(b"content-length", b"abc")]),
    ("content-length negative", [(b"content-length", b"-1")]),
    ("content-length huge", [(b"content-length", b"99999999999999999999")]),
    ("content-length two", [(b"content-length", b"1"), (b"content-length", b"2")]),
    ("host odd", [(b"host", b"a b/../\xff")]),
    ("host empty", [(b"host", b"")]),
    ("accept xml", [(b"accept", b"application/xml")]),
    ("accept garbage", [(b"accept", b";;;q=x, */*;q=abc")]),
    ("cookie garbage", [(b"cookie", b"sessionid=\xff; csrftoken=;;=; a")]),
    ("forwarded garbage", [(b"x-forwarded-for", b"not-an-ip, ::::, \xff")]),
    ("origin garbage", [(b"origin", b"\xff://")]),
    ("range garbage", [(b"range", b"bytes=9-1,x")]),
]

QUERIES = [
    b"token=%ff",
    b"token=" + b"a" * 10_000,
    b"%00=%00",
    b"wipe=%ff&format=xml",
    b"format=json",
    b"a=1&a=2&" + b"&".join(b"q%d=1" % i for i in range(2000)),
    b"\xff=\xff",
    b"password=" + PASSWORD.encode(),
]


@pytest.fixture
def walk_settings(settings):
    settings.DOCKER_HOST = "unix:///nonexistent/herder-test-walk.sock"
    settings.HERDER_TOKEN_PASSWORD = PASSWORD
    settings.HERDER_DAEMON_IMAGES = ["herder/daemon-echo:latest"]
    # No webstrates server runs here: golem spawns go on to the (absent) engine.
    settings.HERDER_GOLEM_CHECK_EXISTS = False
    return settings


@pytest.fixture
def token(db) -> str:
    return token_mint(email="walker@herder.test", credits=10)


def _paths(template: str, param: str) -> list[bytes]:
    return [template.format(*([param] * template.count("{}"))).encode()]


def _auths(token: str) -> list[tuple[str, list]]:
    return [("anonymous", []), ("token", [(b"authorization", b"Bearer " + token.encode())])]


def _walk(cases) -> list[str]:
    """Run every case; the failures, one line per kind (route, status, answer) with its cases."""
    failures: dict[str, list[str]] = {}
    for what, call in cases:
        try:
            check(call(), what)
        except AssertionError as exc:
            message = str(exc).splitlines()[0]
            label = re.search(r"\[(.*?)\]", what)
            key = re.sub(r" \[.*?\]", "", message)[:300]
            failures.setdefault(key, []).append(label[1] if label else what)
    return [f"{key}  <- {', '.join(labels[:8])}{' ...' if len(labels) > 8 else ''}" for key, labels in failures.items()]


def test_malformed_bodies_on_every_route(walk_settings, token):
    cases = []
    for route in all_routes():
        for path in _paths(route, GOOD_PARAM):
            for method in ("POST", "PUT", "GET"):
                for name, content_type, body in BODIES:
                    for who, auth in _auths(token):
                        what = f"{method} {path.decode()} [{name}, {who}]"
                        cases.append(
                            (
                                what,
                                lambda m=method, p=path, a=auth, c=content_type, b=body: request(
                                    m, p, headers=a, body=b, content_type=c
                                ),
                            )
                        )
    failures = _walk(cases)
    assert not failures, "\n".join(failures)
    # Nothing started: every valid-looking spawn met the missing engine.
    assert not Golem.objects.exclude(container_id="").exists() and not Daemon.objects.exists()
    assert all(run.error for run in MinionRun.objects.all())


def test_odd_paths_and_methods_on_every_route(walk_settings, token):
    cases = []
    for route in all_routes():
        # The valid token too: /token/v1/inspect/<token> then goes all the way.
        for param in [*PARAMS, token] if "{}" in route else [""]:
            for path in _paths(route, param):
                for method in METHODS:
                    for who, auth in _auths(token):
                        what = f"{method} {path.decode('latin-1')[:120]} [{who}]"
                        cases.append((what, lambda m=method, p=path, a=auth: request(m, p, headers=a)))
    # Odd paths that match no route at all.
    for raw in (
        b"/%00",
        b"/golem/v1/%ff",
        b"/" + b"a" * 10_000,
        b"/token/v1/inspect/",
        b"//golem/v1/ls",
        b"/golem/v1/ls/..%2f..%2fadmin",
        b"/daemon/v1/proxy/",
        b"/daemon/v1/proxy/%00/%ff",
    ):
        cases.append((f"GET {raw.decode('latin-1')[:80]} [anonymous]", lambda p=raw: request("GET", p)))
    failures = _walk(cases)
    assert not failures, "\n".join(failures)


def test_odd_headers_and_queries_on_every_route(walk_settings, token):
    cases = []
    for route in all_routes():
        for path in _paths(route, GOOD_PARAM):
            for method in ("GET", "POST"):
                for name, headers in HEADERS:
                    what = f"{method} {path.decode()} [{name}]"
                    cases.append(
                        (
                            what,
                            lambda m=method, p=path, h=headers: request(
                                m,
                                p,
                                headers=h,
                                body=b"a=1" if m == "POST" else b"",
                                content_type=b"application/x-www-form-urlencoded",
                            ),
                        )
                    )
                for query in QUERIES:
                    what = f"{method} {path.decode()}?{query[:40]!r}"
                    cases.append((what, lambda m=method, p=path, q=query: request(m, p, query=q)))
    failures = _walk(cases)
    assert not failures, "\n".join(failures)


def test_generate_with_a_json_list_is_a_400_not_a_500(walk_settings):
    """The reproduction from main: a JSON body that is not an object (500 there)."""
    for body in (b"[1]", b'"x"', b"1", b"null", b"[]", b"true"):
        answer = request(
            "POST",
            "/token/v1/generate",
            query=b"password=" + PASSWORD.encode(),
            body=body,
            content_type=b"application/json",
        )
        assert answer.status == 400, answer
        assert json.loads(answer.body)["code"] == "bad_input"
