"""What the OpenAPI schema (drf-spectacular) says beyond the views' own decorators.

The schema is exact, so that generated clients and fuzzers (Schemathesis in
tests/herder/test_schemathesis.py) can work from it: every route's parameters
with their patterns, every status it can answer with the one error shape, the
headers that come with them. Views declare their own answers with `errors(...)`;
`postprocess` (a SPECTACULAR_SETTINGS hook) adds what no DRF view serves: the
bootstrap script, /pressure, the values of settings-driven enums, Retry-After on
every 429, and a description of the WebSocket routes and the daemon proxy, which
OpenAPI cannot describe as operations.
"""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema_field
from rest_framework import serializers

# The same patterns the services check (golems.services.WEBSTRATE_ID,
# daemons.services.NAME): a value outside them is a 400 before anything happens.
WEBSTRATE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
DAEMON_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
# A minion or daemon file's name, exactly as herder.files.check_name takes it:
# parts of printable characters without '/' or '\\', none empty, '.' or '..', at
# most 255 characters a part and 1024 in all (FILE_NAME_MAX_LENGTH). What no schema
# can say: a name that is both a file and a folder ("a" and "a/b") is refused too.
_CHAR = r"[^/\\\x00-\x1f\x7f]"
_NOT_DOT = r"[^./\\\x00-\x1f\x7f]"
_PART = rf"(?:{_NOT_DOT}{_CHAR}{{0,254}}|\.{_NOT_DOT}{_CHAR}{{0,253}}|\.\.{_CHAR}{{1,253}})"
FILE_NAME_PATTERN = rf"^{_PART}(?:/{_PART})*$"
# The same or empty (`output` empty means none).
OPTIONAL_FILE_NAME_PATTERN = rf"^(?:{_PART}(?:/{_PART})*)?$"
FILE_NAME_MAX_LENGTH = 1024
# daemons.services.parse_ports: empty, or a JSON list of at most 16
# (HERDER_DAEMON_MAX_PORTS) ports 1-65535, as numbers or strings ("8080/tcp" too).
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_PORT_ITEM = rf'(?:{_PORT}|"0*{_PORT}(?:/tcp)?")'
_WS = r"[ \t\n\r]*"


def ports_pattern(most: int) -> str:
    return rf"^(?:{_WS}\[{_WS}(?:{_PORT_ITEM}(?:{_WS},{_WS}{_PORT_ITEM}){{0,{most - 1}}})?{_WS}\]{_WS})?$"


# DRF's CharField refuses NUL characters (400) before a view sees them. Both
# patterns leave out "": drf-spectacular adds it as a oneOf of its own for
# blank-allowing fields, and "" may match only one of the two.
NO_NUL_PATTERN = r"^[^\x00]+$"


@extend_schema_field({"type": "string", "pattern": NO_NUL_PATTERN})
class FormText(serializers.CharField):
    """A CharField whose schema says what DRF refuses in it: NUL characters."""


@extend_schema_field({"type": "string", "pattern": r"^\s*[0-9]+\s*$"})
class FormWholeNumber(serializers.CharField):
    """A whole number sent as text (empty: the default)."""


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="A short machine-readable code, e.g. `golem_not_found`.")
    detail = serializers.CharField(help_text="A sentence for people.")

    class Meta:
        ref_name = "Error"


# What each status means wherever it is answered; a view may say more.
_MEANING = {
    400: "Bad input (`bad_input` and more precise codes); also malformed framing "
    "(a Content-Length that is not one number).",
    401: "No valid token (`invalid_token`); `WWW-Authenticate: Bearer` says how to send one.",
    402: "The account has no credits left (`insufficient_credits`).",
    404: "Not found.",
    405: "Method not allowed.",
    409: "Conflict.",
    413: "The body is over the route's cap (`payload_too_large`), refused while it streams.",
    415: "The body is neither a form (`application/x-www-form-urlencoded`) nor multipart.",
    429: "Refused for load (`too_many_requests`); `Retry-After` says in how many seconds to try again.",
    503: "The container engine is unavailable or too slow (`runtime_unavailable`, `image_missing`).",
}


def errors(*statuses: int, **described: str) -> dict:
    """Error answers for `extend_schema(responses=...)`: each status's Error
    shape with its usual meaning, or the one given as `_<status>="..."`."""
    answers = {}
    for status in statuses:
        text = described.get(f"_{status}") or _MEANING.get(status, "")
        # JSON whatever the route's other answers are (plain text, YAML).
        answers[(status, "application/json")] = OpenApiResponse(ErrorSerializer, description=text)
    return answers


# Daemon routes: either scheme, never anonymous (accounts/schema.py defines them).
TOKEN_REQUIRED = [{"token": []}, {"tokenQuery": []}]


def path_parameter(name: str, pattern: str, description: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.PATH, pattern=pattern, description=description)


WEBSTRATE_PARAMETER = path_parameter(
    "webstrate",
    WEBSTRATE_ID_PATTERN,
    "The webstrate id: 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit. "
    "Any other is 400 `bad_webstrate_id`.",
)
# The short name, or the full one (`Name`: the short one, '-', the token's jti).
DAEMON_NAME_OR_FULL_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}(?:-[0-9a-f]{32})?$"
DAEMON_NAME_PARAMETER = path_parameter(
    "name",
    DAEMON_NAME_OR_FULL_PATTERN,
    "The daemon's name (its answer's `ShortName`) or full name (`Name`). Any other names no daemon: 404.",
)


def _files(binary: bool) -> dict:
    """Every other field (or upload) of a spawn form: a file, named by the field."""
    value = {"type": "string", "description": "A file's content, written at the field's name."}
    if binary:
        value["format"] = "binary"
    return {
        "propertyNames": {"pattern": FILE_NAME_PATTERN, "maxLength": FILE_NAME_MAX_LENGTH},
        "additionalProperties": value,
    }


def minion_form(*, binary: bool) -> dict:
    """POST /minion/v1/spawn's form (multipart with `binary`: uploads too)."""
    return {
        "type": "object",
        "required": ["env"],
        "properties": {
            "env": {
                "type": "string",
                "description": "The image to run in: python, ruby, node, latex, "
                "or an env the operators added (HERDER_MINION_ENVS). Another is 400 `unknown_env`.",
            },
            "output": {
                "type": "string",
                "pattern": OPTIONAL_FILE_NAME_PATTERN,
                "maxLength": FILE_NAME_MAX_LENGTH,
                "description": "A file to answer instead of the JSON result, when the run made it.",
            },
        },
        **_files(binary),
        "description": "`env`, `output`, and every other field or upload is a file written into "
        "/minion before the run, named by the field (sub-folders allowed). A name "
        "both a file and a folder (`a` and `a/b`) is 400 `bad_file_name`.",
    }


def daemon_form(*, binary: bool) -> dict:
    """POST /daemon/v1/spawn's form."""
    return {
        "type": "object",
        "required": ["name", "image"],
        "properties": {
            "name": {
                "type": "string",
                "pattern": DAEMON_NAME_PATTERN,
                "description": "The daemon's name, unique per account: 1-63 of a-z, 0-9, '_', '.', '-'.",
            },
            "image": {"type": "string", "description": "An image listed in HERDER_DAEMON_IMAGES."},
            "ports": {
                "type": "string",
                "pattern": ports_pattern(16),  # the setting's, in postprocess
                "description": 'A JSON list of ports to publish: [8080] or ["80", "443/tcp"].',
            },
        },
        **_files(binary),
        "description": "`name`, `image`, `ports`, and every other field or upload is a file "
        "written into the daemon's volume at /minion.",
    }


# --- The postprocessing hook ---------------------------------------------------------

_DESCRIPTION = """\
Containers for webstrates: golems (a headless Chromium per webstrate), controlled minions
(run submitted code), ad-hoc minions (WebSocket pairing) and daemons (long-lived, paid in credits).

Every error is JSON `{"code", "detail"}` (the `Error` component). Daemon routes need a token:
`Authorization: Bearer <token>` or `?token=<token>`; a minion spawn may carry one (the client is
then its account, a bad one is ignored). A 429 carries `Retry-After` (seconds).

What OpenAPI cannot describe as operations (also in `x-websockets`, `x-daemon-proxy` and
`x-bootstrap`):

* **WebSockets** (close codes after `{"type": "error", "code", "detail"}`; 4400 a bad id, 4404,
  4409, 4403, 4429, 1009 a frame over `HERDER_WS_MAX_FRAME`):
  * `GET /golem/v1/connect/{webstrate}`: the golem's control socket. Events
    `{"Event": "minion-connected" | "minion-disconnected", "ID", "Type"}`. A second one is
    HTTP 409 `golem_connected` before the upgrade; one without the golem's proof while the
    webstrate has a golem container is 4403 `golem_proof_required`.
  * `GET /golem/v1/connect-to/{webstrate}/{minion}`: the golem's socket to one ad-hoc minion;
    frames relayed both ways. HTTP 404 `minion_not_found`, 409 `minion_paired` before the upgrade.
  * `GET /minion/v1/connect/{webstrate}?type=<type>`: an ad-hoc minion, paired with the golem;
    `golem-not-found` then 4404 when no golem answers in `HERDER_GOLEM_WAIT` seconds,
    `golem-disconnected` when the golem's socket leaves.
  * `GET /daemon/v1/attach/{name}?token=<token>` (or `Authorization: Bearer`): the daemon's
    console, frames in to its stdin, its stdout and stderr out; 4401 without a valid token,
    4404 for no such daemon, 4409 `not_running`, 4503 when the engine cannot attach.
* **The daemon proxy**: `/daemon/v1/proxy/{Name}/{path}` (the daemon answer's `ProxyURL`,
  `Name` holding the token's id) forwards any method, body and WebSocket to the daemon's
  first port, streaming; on `HERDER_DAEMON_ORIGIN` each daemon also has an origin of its own
  (the answer's `URL`). Its errors are the same JSON: 400 `bad_path`, 404 `not_found` (no
  running daemon of that Name with a port), 429 (too many connections to it, `Retry-After`),
  408 (the body stopped arriving), 502 `bad_gateway`, 504 `gateway_timeout`; its WebSockets
  close with 4400, 4404, 4429 or 4502.
* **The bootstrap script**: `GET /` and `GET /golem/v1/` (documented below) answer the
  JavaScript a webstrate includes; in a browser it spawns the page's golem, in the golem's
  Chromium it runs the page's `.golem,#emet` code.
"""

_WEBSOCKETS = [
    {
        "path": "/golem/v1/connect/{webstrate}",
        "role": "the golem's control socket",
        "refusals": {
            "409": "golem_connected (before the upgrade)",
            "4403": "golem_proof_required",
            "4400": "bad_webstrate_id",
            "4409": "golem_connected (replaced)",
        },
    },
    {
        "path": "/golem/v1/connect-to/{webstrate}/{minion}",
        "role": "the golem's socket to one minion",
        "refusals": {
            "404": "minion_not_found (before the upgrade)",
            "409": "minion_paired (before the upgrade)",
            "4400": "bad id",
        },
    },
    {
        "path": "/minion/v1/connect/{webstrate}",
        "query": {"type": "the minion's type, told to the golem"},
        "role": "an ad-hoc minion",
        "refusals": {"4404": "golem-not-found", "4413": "pairing buffer full"},
    },
    {
        "path": "/daemon/v1/attach/{name}",
        "query": {"token": "a herder token (or Authorization: Bearer)"},
        "role": "a daemon's console",
        "refusals": {
            "4401": "invalid_token",
            "4404": "not_found",
            "4409": "not_running",
            "4503": "runtime_unavailable",
        },
    },
]


def _text_answer(description: str, media_type: str, extra: dict | None = None) -> dict:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}, **(extra or {})}


def _error_content() -> dict:
    return {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def _plain_paths() -> dict:
    """Routes served by plain Django views, which drf-spectacular does not see."""
    method_not_allowed = {"description": _MEANING[405], "content": _error_content()}
    bootstrap = {
        "get": {
            "operationId": "golem_bootstrap",
            "summary": "The bootstrap script a webstrate includes",
            "description": "JavaScript naming this herder (`HERDER_PUBLIC_URL`); cached 5 minutes.",
            "tags": ["golem"],
            "responses": {"200": _text_answer("The script.", "application/javascript"), "405": method_not_allowed},
        },
    }
    pressure = {
        "get": {
            "operationId": "pressure",
            "summary": "How loaded this herder process is",
            "description": "Running and queued minions and their limits, golems, sockets, and the "
            "refusals of the last minute and since start, by reason. No engine call: "
            "cheap enough to poll every second.",
            "tags": ["pressure"],
            "responses": {
                "200": {
                    "description": "A snapshot; each section from HERDER_PRESSURE_SOURCES "
                    '(a failing one is `{"error": ...}`).',
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["time", "refusals"],
                                "properties": {
                                    "time": {"type": "number"},
                                    "refusals": {
                                        "type": "object",
                                        "required": ["recent", "recent_seconds", "total"],
                                        "properties": {
                                            "recent": {"type": "object", "additionalProperties": {"type": "integer"}},
                                            "recent_seconds": {"type": "integer"},
                                            "total": {"type": "object", "additionalProperties": {"type": "integer"}},
                                        },
                                    },
                                },
                                "additionalProperties": {"type": "object"},
                            }
                        }
                    },
                },
                "405": method_not_allowed,
            },
        },
    }
    return {
        "/": bootstrap,
        "/golem/v1/": {"get": {**bootstrap["get"], "operationId": "golem_bootstrap_v1"}},
        "/pressure": pressure,
    }


def _retry_after() -> dict:
    return {
        "Retry-After": {
            "description": "Seconds to wait before trying again.",
            "required": True,
            "schema": {"type": "integer", "minimum": 1},
        }
    }


def _www_authenticate() -> dict:
    return {
        "WWW-Authenticate": {
            "description": 'How to authenticate: `Bearer realm="herder"`.',
            "schema": {"type": "string"},
        }
    }


def _forms(operation: dict | None) -> list[dict]:
    if not operation:
        return []
    return [media.get("schema", {}) for media in operation.get("requestBody", {}).get("content", {}).values()]


def _settle(operation: dict | None, *, fields: int, **properties: dict) -> None:
    """What depends on this process's settings, in `operation`'s forms: how many
    fields it may have (the files plus the protocol's) and its properties' bounds."""
    if operation and "requestBody" in operation:
        operation["requestBody"]["required"] = True  # no body: no env or name, a 400
    for form in _forms(operation):
        form["maxProperties"] = settings.HERDER_MINION_MAX_FILES + fields
        for name, changes in properties.items():
            form.get("properties", {}).get(name, {}).update(changes)


def postprocess(result: dict, generator, request, public) -> dict:
    """SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]: runs after drf-spectacular's own
    (enum naming), so the schema a request gets reflects this process's settings."""
    paths = result.setdefault("paths", {})
    for path, item in _plain_paths().items():
        paths.setdefault(path, item)
    for item in paths.values():
        for operation in item.values():
            responses = operation.get("responses", {})
            if "429" in responses:
                responses["429"].setdefault("headers", {}).update(_retry_after())
            if "401" in responses:
                responses["401"].setdefault("headers", {}).update(_www_authenticate())
    _settle(
        paths.get("/minion/v1/spawn", {}).get("post"), fields=2, env={"enum": sorted(settings.HERDER_MINION_IMAGES)}
    )
    images = settings.HERDER_DAEMON_IMAGES
    _settle(
        paths.get("/daemon/v1/spawn", {}).get("post"),
        fields=3,
        # "*": any image present on the engine; none listed: every spawn is 400.
        image={} if "*" in images else {"enum": list(images)} if images else {"not": {}},
        ports={"pattern": ports_pattern(settings.HERDER_DAEMON_MAX_PORTS)},
    )
    result["info"]["description"] = _DESCRIPTION
    result["x-websockets"] = _WEBSOCKETS
    result["x-daemon-proxy"] = {
        "path": "/daemon/v1/proxy/{Name}/{path}",
        "methods": "any, WebSocket upgrades included",
        "origin": settings.HERDER_DAEMON_ORIGIN or None,
        "errors": {
            "400": "bad_path",
            "404": "not_found",
            "408": "request_timeout",
            "429": "too_many_requests (connections to the daemon)",
            "502": "bad_gateway",
            "504": "gateway_timeout",
        },
    }
    result["x-bootstrap"] = {"paths": ["/", "/golem/v1/"], "media_type": "application/javascript"}
    return result
