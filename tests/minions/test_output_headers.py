"""The headers of a minion's output file, its JSON answer and its errors."""

import pytest
from django.test import Client

from minions.output import output_file_headers

ACTIVE = [
    ("x.html", "text/html"),
    ("x.htm", "text/html"),
    ("deep/folder/x.svg", "image/svg+xml"),
    ("x.xml", "text/xml"),
    ("x.xhtml", "application/xhtml+xml"),
    ("x.js", "text/javascript"),
    ("x.mjs", "text/javascript"),
    ("x.css", "text/css"),
    ("x.py", "text/x-python"),
    # Unknown or compressed: nothing claimed about the bytes.
    ("x.unknownext", "application/octet-stream"),
    ("noextension", "application/octet-stream"),
    ("x.html.gz", "application/octet-stream"),
    ("x.svgz", "application/octet-stream"),
]

PASSIVE = [
    ("x.pdf", "application/pdf"),
    ("x.png", "image/png"),
    ("x.jpg", "image/jpeg"),
    ("x.jpeg", "image/jpeg"),
    ("x.gif", "image/gif"),
    ("x.webp", "image/webp"),
    ("x.txt", "text/plain"),
    ("x.csv", "text/csv"),
    ("x.json", "application/json"),
    ("x.mp3", "audio/mpeg"),
    ("x.mp4", "video/mp4"),
    ("x.ogg", "audio/ogg"),
]


@pytest.mark.parametrize(("name", "content_type"), ACTIVE)
def test_an_active_or_unknown_output_file_is_an_attachment(name, content_type):
    headers = output_file_headers(name)

    assert headers["Content-Type"] == content_type
    assert headers["Content-Disposition"] == f'attachment; filename="{name.rsplit("/", 1)[-1]}"'
    assert headers["Content-Security-Policy"] == "sandbox"
    assert headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(("name", "content_type"), PASSIVE)
def test_a_passive_output_file_keeps_its_type_inline_but_sandboxed(name, content_type):
    headers = output_file_headers(name)

    assert headers["Content-Type"] == content_type
    assert headers["Content-Disposition"] == f'inline; filename="{name}"'
    assert headers["Content-Security-Policy"] == "sandbox"
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_a_file_name_cannot_break_out_of_the_disposition_header():
    assert output_file_headers('a";x=1.png')["Content-Disposition"] == 'inline; filename="a\\";x=1.png"'
    assert output_file_headers("é.html")["Content-Disposition"] == "attachment; filename*=utf-8''%C3%A9.html"


@pytest.mark.docker
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("name", "content_type", "disposition"),
    [
        ("x.html", "text/html", 'attachment; filename="x.html"'),
        ("x.svg", "image/svg+xml", 'attachment; filename="x.svg"'),
        ("out/x.png", "image/png", 'inline; filename="x.png"'),
    ],
)
def test_the_spawn_answer_carries_the_headers(name, content_type, disposition):
    answer = Client().post(
        "/minion/v1/spawn", {"env": "python", "main.py": "pass", "output": name, name: "<script>alert(1)</script>"}
    )

    assert answer.status_code == 200
    assert answer.content == b"<script>alert(1)</script>"
    assert answer["Content-Type"] == content_type
    assert answer["Content-Disposition"] == disposition
    assert answer["Content-Security-Policy"] == "sandbox"
    assert answer["X-Content-Type-Options"] == "nosniff"


@pytest.mark.docker
@pytest.mark.django_db
def test_the_json_answer_is_not_sniffed():
    answer = Client().post(
        "/minion/v1/spawn", {"env": "python", "main.py": "print('<script>')", "output": "missing.html"}
    )

    assert answer.json()["StdOut"] == "<script>\n"
    assert answer["Content-Type"] == "application/json"
    assert answer["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
def test_an_error_answer_is_not_sniffed():
    answer = Client().post("/minion/v1/spawn", {"env": "<script>", "main.py": "pass"})

    assert answer.status_code == 400
    assert answer.json()["code"] == "unknown_env"
    assert answer["Content-Type"] == "application/json"
    assert answer["X-Content-Type-Options"] == "nosniff"
