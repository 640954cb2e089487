"""A minion's output file never runs as the herder's origin, in real Chromium.

The attack: a page on another site posts a form to /minion/v1/spawn naming an
output file it also sends (`output=x.html`, `x.html=<script>...`). Answered
inline as text/html, that script would run on the herder's origin and drive
the admin with the operator's session cookie. A real herder process (Daphne,
its own SQLite database), an operator logged in through the admin's login page,
and the attacker's page served from another site (attacker.localhost).
"""

from __future__ import annotations

import http.server
import sqlite3
import subprocess
import sys
import threading

import pytest

from tests.browser import browser  # noqa: F401
from tests.golems.conftest import ROOT, Herder, herder_env, migrate

pytestmark = [pytest.mark.docker]

OPERATOR, PASSWORD = "operator", "a-long-operator-password-1"

# Runs only if the herder's origin renders it: marks the origin's storage at
# once, then creates an admin user through the admin's own form.
PAYLOAD_JS = r"""
localStorage.setItem("herder-pwned", "1");
document.title = "pwned";
fetch("/admin/auth/user/add/").then(r => r.text()).then(html => {
  const token = html.match(/name="csrfmiddlewaretoken" value="([^"]+)"/)[1];
  const body = new URLSearchParams({csrfmiddlewaretoken: token, username: "pwned",
    password1: "Pwned-password-123", password2: "Pwned-password-123", usable_password: "true"});
  return fetch("/admin/auth/user/add/", {method: "POST", body});
});
"""

PAYLOADS = {
    "x.html": f"<!doctype html><title>x</title><script>{PAYLOAD_JS}</script>",
    "x.svg": f'<svg xmlns="http://www.w3.org/2000/svg"><script>{PAYLOAD_JS}</script></svg>',
    "x.xhtml": f'<html xmlns="http://www.w3.org/1999/xhtml"><body><script>{PAYLOAD_JS}</script></body></html>',
    "x.txt": f"<!doctype html><script>{PAYLOAD_JS}</script>",
    "x.unknownext": f"<!doctype html><script>{PAYLOAD_JS}</script>",
}


class Site:
    """One page on 127.0.0.1, reached by the browser as another site."""

    def __init__(self, page: str) -> None:
        body = page.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        # Chromium resolves *.localhost to loopback: another site than 127.0.0.1.
        self.url = f"http://attacker.localhost:{self.server.server_address[1]}/"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def herder(tmp_path_factory, docker_engine):
    data = tmp_path_factory.mktemp("herder-origin")
    # Every run cold: the process leaves no warm container behind.
    env = herder_env(data, HERDER_MINION_POOL_SIZE="0")
    migrate(env)
    subprocess.run(
        [
            sys.executable,
            "manage.py",
            "createsuperuser",
            "--noinput",
            "--username",
            OPERATOR,
            "--email",
            "operator@example.org",
        ],
        cwd=ROOT,
        check=True,
        env={**env, "DJANGO_SUPERUSER_PASSWORD": PASSWORD},
    )
    process = Herder(env=env, log=data / "herder.log")
    process.database = data / "herder.sqlite3"
    yield process
    process.stop()


def users(herder) -> list[str]:
    with sqlite3.connect(f"file:{herder.database}?mode=ro", uri=True) as db:
        return sorted(name for (name,) in db.execute("SELECT username FROM auth_user"))


@pytest.fixture
def operator(browser, herder):  # noqa: F811
    """A browser context whose operator is logged into the admin."""
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.goto(f"{herder.http}/admin/login/")
    page.fill("#id_username", OPERATOR)
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{herder.http}/admin/")
    assert page.locator("#user-tools").count() == 1, "the operator is not logged in"
    page.close()
    yield context
    context.close()


def attack_page(herder_url: str, name: str) -> str:
    fields = {"env": "python", "main.py": "pass", "output": name, name: PAYLOADS[name]}
    inputs = "".join(
        f'<textarea name="{key}">{value.replace("&", "&amp;").replace("<", "&lt;")}</textarea>'
        for key, value in fields.items()
    )
    return (
        f"<!doctype html><title>attacker</title>"
        f'<form id="f" method="post" action="{herder_url}/minion/v1/spawn">{inputs}'
        f'<button id="go">go</button></form>'
    )


def marker_on_herder_origin(context, herder) -> str | None:
    page = context.new_page()
    page.goto(f"{herder.http}/admin/")
    try:
        return page.evaluate("localStorage.getItem('herder-pwned')")
    finally:
        page.close()


@pytest.mark.parametrize("name", ["x.html", "x.svg", "x.xhtml", "x.unknownext"])
def test_an_active_output_file_is_downloaded_never_run_on_the_herder_origin(operator, herder, name):
    site = Site(attack_page(herder.http, name))
    try:
        page = operator.new_page()
        page.goto(site.url)
        with page.expect_download(timeout=15000) as download:
            page.click("#go")
        saved = download.value.path()
        assert saved is not None and b"herder-pwned" in open(saved, "rb").read()
        assert page.url == site.url, "the browser left the attacker's page for the output"
        page.close()
    finally:
        site.close()
    assert marker_on_herder_origin(operator, herder) is None
    assert users(herder) == [OPERATOR]


def test_a_passive_output_file_shows_as_itself_without_running(operator, herder):
    site = Site(attack_page(herder.http, "x.txt"))
    try:
        page = operator.new_page()
        page.goto(site.url)
        with page.expect_navigation(url=f"{herder.http}/minion/v1/spawn"):
            page.click("#go")
        # Shown as text: the markup is the document's text, not its elements.
        assert "<script>" in page.inner_text("body")
        assert page.title() != "pwned"
        page.close()
    finally:
        site.close()
    assert marker_on_herder_origin(operator, herder) is None
    assert users(herder) == [OPERATOR]


# Writes a 3x2 red PNG without any library, and a one-page PDF.
MAKE_IMAGES = r"""
import struct, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
rows = b"".join(b"\x00" + b"\xff\x00\x00" * 3 for _ in range(2))
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 3, 2, 8, 2, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
open("out.png", "wb").write(png)
open("out.pdf", "wb").write(b"%PDF-1.1\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
    b"2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
    b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 100 100]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
"""

SHOW_OUTPUT = r"""
async ([herder, name, code]) => {
  const form = new FormData();
  form.append("env", "python");
  form.append("output", name);
  form.append("main.py", new Blob([code], {type: "text/x-python"}), "main.py");
  const answer = await fetch(herder + "/minion/v1/spawn", {method: "POST", body: form});
  const blob = await answer.blob();
  const shown = {status: answer.status, type: blob.type, size: blob.size};
  if (name.endsWith(".png")) {
    const img = document.createElement("img");
    img.src = URL.createObjectURL(blob);
    document.body.append(img);
    await img.decode();
    shown.width = img.naturalWidth;
    shown.height = img.naturalHeight;
  } else {
    shown.head = await blob.slice(0, 8).text();
  }
  return shown;
}
"""


def test_a_page_on_another_origin_shows_an_output_image(browser, herder):  # noqa: F811
    site = Site("<!doctype html><title>webstrate</title><body></body>")
    try:
        page = browser.new_page()
        page.goto(site.url)
        png = page.evaluate(SHOW_OUTPUT, [herder.http, "out.png", MAKE_IMAGES])
        pdf = page.evaluate(SHOW_OUTPUT, [herder.http, "out.pdf", MAKE_IMAGES])
        page.close()
    finally:
        site.close()
    assert png == {"status": 200, "type": "image/png", "size": png["size"], "width": 3, "height": 2}
    assert pdf == {"status": 200, "type": "application/pdf", "size": pdf["size"], "head": "%PDF-1.1"}
