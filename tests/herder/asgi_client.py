"""Requests to the herder's whole ASGI application (every layer, herder/asgi.py),
in process, from a chosen client address; and reading /metrics."""

from __future__ import annotations

from asgiref.sync import async_to_sync
from channels.testing import ApplicationCommunicator
from prometheus_client.parser import text_string_to_metric_families

from herder.asgi import application


async def ahttp(
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    client: str = "127.0.0.1",
    query: str = "",
    timeout: float = 60,
) -> dict:
    """One request; its status, headers (a dict, lower-case names) and body."""
    raw = [(name.lower().encode(), value.encode("latin-1")) for name, value in (headers or {}).items()]
    if body and not any(name == b"content-length" for name, _ in raw):
        raw.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": raw,
        "client": (client, 40000),
        "server": ("127.0.0.1", 8000),
    }
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": body, "more_body": False})
    start = await communicator.receive_output(timeout)
    assert start["type"] == "http.response.start", start
    chunks = []
    while True:
        message = await communicator.receive_output(timeout)
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await communicator.wait(timeout)
    headers = {name.decode().lower(): value.decode("latin-1") for name, value in start["headers"]}
    return {"status": start["status"], "headers": headers, "body": b"".join(chunks)}


def http(method: str, path: str, **kwargs) -> dict:
    return async_to_sync(ahttp)(method, path, **kwargs)


def samples(text: str) -> dict[tuple, float]:
    """Every sample of a scrape: (name, (label, value), ...) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return found


def scrape(**kwargs) -> dict[tuple, float]:
    answer = http("GET", "/metrics", **kwargs)
    assert answer["status"] == 200, answer
    assert answer["headers"]["content-type"].startswith("text/plain; version=")
    return samples(answer["body"].decode())


def value(scraped: dict, name: str, **labels) -> float:
    return scraped.get((name, *sorted(labels.items())), 0.0)
