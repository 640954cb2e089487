"""The operators' admin in real Chromium against a real `herd`: the dashboard
after real minion runs, a failed run's traceback, the daemon console (admin
and token holder) typing a line and reading the daemon's echo back, and the
daemon page's Stop button. Screenshots go to the test's tmp path."""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.parse
import urllib.request

import pytest
from playwright.sync_api import expect

from tests.browser import browser  # noqa: F401
from tests.daemons.test_live import LiveHerder, operator_login

pytestmark = pytest.mark.docker

TERMINAL_TEXT = """() => { const b = window.herderTerminal.buffer.active; let s = "";
  for (let i = 0; i < b.length; i++) { s += b.getLine(i).translateToString(true) + "\\n"; } return s; }"""


@pytest.fixture
def live(tmp_path, docker_engine):
    herder = LiveHerder(tmp_path)
    yield herder
    herder.close()


def run_minion(live: LiveHerder, source: str) -> dict:
    data = urllib.parse.urlencode({"env": "python", "main.py": source}).encode()
    with urllib.request.urlopen(urllib.request.Request(f"{live.base}/minion/v1/spawn", data=data), timeout=60) as r:
        return json.loads(r.read())


def query(live: LiveHerder, sql: str) -> list:
    with sqlite3.connect(live.data_dir / "herder.sqlite3") as db:
        return db.execute(sql).fetchall()


def type_and_read_back(page, line: str) -> str:
    # No wait_for_function: its string predicates are eval, which the token
    # console's CSP refuses (as it should); evaluate() of a function is not.
    expect(page.locator("#console-status")).to_have_text("connected", timeout=15000)
    page.click("#terminal")
    page.keyboard.type(line)
    page.keyboard.press("Enter")
    deadline = time.monotonic() + 15
    while "echo: " + line not in (text := page.evaluate(TERMINAL_TEXT)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return text


def test_dashboard_console_and_buttons_in_chromium(live, browser, tmp_path):  # noqa: F811
    for i in range(4):
        assert run_minion(live, f"print({i})")["ExitCode"] == 0
    failed = run_minion(live, "def divide():\n    return 1 / 0\ndivide()\n")
    assert failed["ExitCode"] != 0
    token = live.token("alice@herder.test")
    status, answer = live.spawn(token, "console")
    assert status == 200, answer
    live.wait_ready(answer)
    ((daemon_pk,),) = query(live, "select id from daemons_daemon")
    ((failed_pk,),) = query(live, "select id from minions_minionrun where exit_code != 0")

    context = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        assert operator_login(context, live.base)
        page = context.new_page()

        page.goto(f"{live.base}/admin/dashboard/")
        assert page.locator("svg.chart").count() >= 3
        assert page.locator("svg.chart rect.bar").count() > 0  # runs per minute
        assert page.locator("svg.chart circle.point").count() > 0  # latency, running over time
        assert "python: exit 0" in page.content() and "python: exit ≠ 0" in page.content()
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        page.goto(f"{live.base}/admin/minions/minionrun/{failed_pk}/change/")
        assert "ZeroDivisionError: division by zero" in page.locator("pre.stderr-tail").inner_text()

        page.goto(f"{live.base}/admin/daemons/daemon/{daemon_pk}/change/")
        page.click("#daemon-console")
        page.wait_for_url(f"{live.base}/admin/daemons/daemon/{daemon_pk}/console/")
        assert "echo: hello from the admin" in type_and_read_back(page, "hello from the admin")
        page.screenshot(path=str(tmp_path / "console.png"))

        ((volume,),) = query(live, "select volume from daemons_daemon")
        page.goto(f"{live.base}/admin/daemons/daemon/volumes/")
        row = page.locator("tr.volume", has_text=volume)
        assert "alice@herder.test" in row.inner_text() and "running" in row.inner_text()

        page.goto(f"{live.base}/admin/daemons/daemon/{daemon_pk}/change/")
        page.click("#daemon-stop")
        page.wait_for_selector("#daemon-wipe")
        assert query(live, "select state from daemons_daemon") == [("killed",)]
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#daemon-wipe")
        page.wait_for_selector("text=Wiped the volume")
        page.goto(f"{live.base}/admin/daemons/daemon/volumes/")
        assert page.locator("tr.volume", has_text=volume).count() == 0
        page.goto(f"{live.base}/admin/")
        assert "console-" in page.locator("#recent-actions-module").inner_text()
    finally:
        context.close()
    assert sorted(query(live, "select change_message from django_admin_log")) == [
        ("Stopped (volume kept)",),
        (f"Wiped volume {volume}",),
    ]


def test_the_token_holders_console_in_chromium(live, browser, tmp_path):  # noqa: F811
    token = live.token("alice@herder.test")
    status, answer = live.spawn(token, "typed")
    assert status == 200, answer
    live.wait_ready(answer)

    context = browser.new_context()
    try:
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        page.goto(f"{live.base}/daemon/v1/console/{answer['Name']}#token={token}")
        text = type_and_read_back(page, "hello from a token holder")
        assert "echo: hello from a token holder" in text
        # The fragment is gone from the address bar, and only the socket carried the token.
        assert "token" not in page.url
        assert not [url for url in requests if token in url], requests
        page.screenshot(path=str(tmp_path / "token-console.png"))

        # Typed instead: a second page, the token in the form, never in the page's URL.
        typed = context.new_page()
        typed.goto(f"{live.base}/daemon/v1/console/{answer['Name']}")
        typed.fill("#console-token-input", token)
        typed.click("#console-token button")
        assert "echo: typed in" in type_and_read_back(typed, "typed in")
        assert "token" not in typed.url

        # A wrong token: the socket refuses it and the page says so.
        wrong = context.new_page()
        wrong.goto(f"{live.base}/daemon/v1/console/{answer['Name']}#token=not-a-token")
        expect(wrong.locator("#console-status")).to_have_text("closed (4401)", timeout=15000)
    finally:
        context.close()
