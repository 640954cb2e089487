"""A minion run is recorded from its start (running, then finished or failed),
and a failed run keeps the end of its stderr for the admin."""

import threading
import time

import pytest
from django.test import Client

from minions.models import MinionRun

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

FAILS = {
    "main.py": "import sys\nprint('x' * 9000, file=sys.stderr)\n"
    "def deep():\n    raise ValueError('the reason it failed')\ndeep()\n"
}


def spawn(fields: dict):
    return Client().post("/minion/v1/spawn", fields)


def test_a_run_in_progress_is_listed_as_running_then_finished():
    answers = []
    thread = threading.Thread(
        target=lambda: answers.append(spawn({"env": "python", "main.py": "import time; time.sleep(3); print('done')"}))
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not MinionRun.objects.filter(state="running").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        run = MinionRun.objects.get()
        assert run.state == "running" and run.finished is None
    finally:
        thread.join(60)
    assert answers[0].status_code == 200, answers[0].content
    run.refresh_from_db()
    assert run.state == "finished" and run.exit_code == 0 and run.stderr_tail == ""
    assert run.finished >= run.created and run.duration_ms >= 3000


def test_a_failed_run_keeps_the_end_of_its_stderr(settings):
    settings.HERDER_MINION_KEEP_STDERR = 2048
    response = spawn({"env": "python", **FAILS})
    assert response.status_code == 200 and response.json()["ExitCode"] != 0

    run = MinionRun.objects.get()
    assert run.state == "finished" and run.stderr_bytes > 9000
    assert "ValueError: the reason it failed" in run.stderr_tail
    assert len(run.stderr_tail.encode()) <= 2048

    from django.contrib.auth.models import User

    User.objects.create_superuser("operator", "op@herder.test", "pw")
    client = Client()
    client.login(username="operator", password="pw")
    page = client.get(f"/admin/minions/minionrun/{run.pk}/change/").content.decode()
    assert "ValueError: the reason it failed" in page
    assert " UTC" in page, page
    assert f"{run.stderr_bytes / 1024:.1f} KiB" in page, page


def test_keep_stderr_zero_keeps_none(settings):
    settings.HERDER_MINION_KEEP_STDERR = 0
    assert spawn({"env": "python", **FAILS}).status_code == 200
    assert MinionRun.objects.get().stderr_tail == ""


def test_a_successful_run_keeps_no_stderr(settings):
    assert spawn({"env": "python", "main.py": "import sys; print('warning', file=sys.stderr)"}).status_code == 200
    run = MinionRun.objects.get()
    assert run.exit_code == 0 and run.stderr_bytes > 0 and run.stderr_tail == ""
