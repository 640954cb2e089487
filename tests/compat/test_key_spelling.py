"""One spelling per meaning: no JSON answer has two keys that differ only in case.

Clients that match keys regardless of case, as Go's encoding/json does, would read
one or the other of `Name` and `name` depending on their order. Checked twice: on
the OpenAPI schema of every route (so a new route is checked without touching this
file), and on real answers of the routes the original had: token generate and
inspect, minion spawn, daemon spawn, ls and kill, golem ls.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from daemons.models import Daemon
from golems.models import Golem
from herder.runtime import get_runtime

PASSWORD = "compat-token-password"
ECHO = "herder/daemon-echo:latest"


def case_clashes(value, where: str = "$") -> list[str]:
    """Every place in a JSON value where an object has keys that differ only in case."""
    clashes = []
    if isinstance(value, dict):
        spellings: dict[str, list[str]] = {}
        for key in value:
            spellings.setdefault(key.lower(), []).append(key)
        clashes += [f"{where}: {keys}" for keys in spellings.values() if len(keys) > 1]
        for key, item in value.items():
            clashes += case_clashes(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            clashes += case_clashes(item, f"{where}[{index}]")
    return clashes


def test_case_clashes_finds_them_at_any_depth():
    assert case_clashes({"Name": 1, "ShortName": 2, "Ports": {"80": 1}}) == []
    assert case_clashes([{"a": {"Name": 1, "name": 2}}]) == ["$[0].a: ['Name', 'name']"]


# --- Every route, from the schema --------------------------------------------


def _schema_properties(schema: dict, components: dict, where: str, seen: set[str]) -> list[str]:
    """The clashes among the properties of a response schema, following $ref."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name in seen:
            return []
        return _schema_properties(components[name], components, f"{where}<{name}>", seen | {name})
    clashes = case_clashes({key: None for key in schema.get("properties", {})}, where)
    for key, item in schema.get("properties", {}).items():
        clashes += _schema_properties(item, components, f"{where}.{key}", seen)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            clashes += _schema_properties(schema[key], components, f"{where}[]", seen)
    for key in ("allOf", "oneOf", "anyOf"):
        for item in schema.get(key, []):
            clashes += _schema_properties(item, components, where, seen)
    return clashes


def test_no_response_in_the_schema_has_keys_that_differ_only_in_case():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    components = schema.get("components", {}).get("schemas", {})
    clashes, answers = [], 0
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                for content in response.get("content", {}).values():
                    answers += 1
                    clashes += _schema_properties(
                        content.get("schema", {}), components, f"{method.upper()} {path} {status}", set()
                    )
    assert answers >= 8  # the walk did see the answers
    assert clashes == []


# --- Real answers ------------------------------------------------------------


@pytest.fixture
def daemons_removed(docker_engine, settings):
    settings.HERDER_DAEMON_IMAGES = [ECHO]
    yield
    for info in get_runtime().list(kind="daemon", ours=True):
        get_runtime().remove(info.handle)
    for daemon in Daemon.objects.all():
        get_runtime().remove_volume(daemon.volume)


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_real_answers_of_the_originals_routes_have_one_spelling_per_key(settings, daemons_removed):
    settings.HERDER_TOKEN_PASSWORD = PASSWORD
    client = APIClient()
    answers = {}

    def answer(label: str, response) -> dict | list:
        assert response.status_code == 200, (label, response.status_code, response.content[:500])
        answers[label] = response.json()
        return answers[label]

    token = answer(
        "token generate",
        client.post("/token/v1/generate", {"password": PASSWORD, "email": "keys@herder.test", "credits": "1000"}),
    )["token"]
    answer("token inspect", client.get(f"/token/v1/inspect/{token}"))
    answer("minion spawn", client.post("/minion/v1/spawn", {"env": "python", "main.py": "print('keys')"}))

    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    spawned = answer(
        "daemon spawn", client.post("/daemon/v1/spawn", {"name": "keys", "image": ECHO, "ports": '["8080"]'})
    )
    listed = answer("daemon ls", client.get("/daemon/v1/ls"))
    answer("daemon kill", client.get("/daemon/v1/kill/keys"))

    Golem.objects.create(webstrate="compat-keys", container_id="0" * 64, container_name="herder-golem-keys")
    assert answer("golem ls", client.get("/golem/v1/ls", HTTP_ACCEPT="application/json"))

    assert {label: case_clashes(value) for label, value in answers.items()} == {label: [] for label in answers}
    # The daemon's two names: the proxy's, and the account's.
    assert spawned["Name"].startswith("keys-") and spawned["ShortName"] == "keys"
    assert [daemon["ShortName"] for daemon in listed] == ["keys"]
