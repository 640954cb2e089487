"""Concurrent spenders never overdraw, and the ledger always equals the balance.

Run on SQLite (the default) and on PostgreSQL (deploy/test.sh runs this
folder again with DATABASE_URL set). Worker processes, each with several
threads, spend on both engines; threads inside the test process need
PostgreSQL, because the SQLite test database lives in shared-cache memory,
where concurrent writers fail at once ("table is locked") instead of waiting
as they do on the herder's SQLite file.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection, connections

from accounts.models import Account, CreditEntry
from accounts.services import account_balance, account_ledger_sum, credits_spend, token_mint

ROOT = Path(settings.BASE_DIR)
THREADS = 8
SPENDS_EACH = 25
CREDITS = 1000  # less than THREADS * SPENDS_EACH * 7 asked for: the balance runs out


def spend_from_threads(account: Account, amount: int) -> list[int]:
    spent: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def spender() -> None:
        try:
            start.wait()
            mine = sum(
                credits_spend(account=account, amount=amount, subject=threading.current_thread().name)
                for _ in range(SPENDS_EACH)
            )
            spent.append(mine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=spender, name=f"spender-{i}") for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return spent


in_process_threads = pytest.mark.skipif(
    settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
    reason="in-memory SQLite test databases cannot take concurrent writers; the process tests cover SQLite",
)


@in_process_threads
@pytest.mark.django_db(transaction=True)
def test_concurrent_spending_from_threads_never_overdraws():
    token_mint(email="carol@herder.test", credits=CREDITS)
    account = Account.objects.get(email="carol@herder.test")

    spent = spend_from_threads(account, amount=7)

    assert sum(spent) == CREDITS
    assert account_balance(account) == 0 == account_ledger_sum(account)
    assert -sum(CreditEntry.objects.filter(kind="spend").values_list("amount", flat=True)) == CREDITS


@in_process_threads
@pytest.mark.django_db(transaction=True)
def test_concurrent_spending_from_threads_with_credits_left_keeps_the_ledger_exact():
    token_mint(email="carol@herder.test", credits=CREDITS * 10)
    account = Account.objects.get(email="carol@herder.test")

    spent = spend_from_threads(account, amount=3)

    assert sum(spent) == THREADS * SPENDS_EACH * 3
    assert account_balance(account) == CREDITS * 10 - sum(spent) == account_ledger_sum(account)
    assert CreditEntry.objects.filter(kind="spend").count() == THREADS * SPENDS_EACH


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory, django_db_setup, django_db_blocker) -> dict:
    """An environment for worker processes that share the tests' database.

    PostgreSQL: the test database itself. SQLite: the tests' database lives in
    memory, so the workers get a file database of their own, migrated here.
    """
    tmp_path = tmp_path_factory.mktemp("workers")
    env = {
        **os.environ,
        "HERDER_DATA_DIR": str(tmp_path),
        "HERDER_TOKEN_PRIVATE_KEY": settings.HERDER_TOKEN_PRIVATE_KEY,
        "HERDER_TOKEN_PUBLIC_KEY": settings.HERDER_TOKEN_PUBLIC_KEY,
    }
    with django_db_blocker.unblock():
        db = connection.settings_dict
        vendor = connection.vendor
    if vendor == "postgresql":
        env["DATABASE_URL"] = (
            f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        )
    else:
        env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'herder.sqlite3'}"
        subprocess.run([sys.executable, str(ROOT / "manage.py"), "migrate", "-v0"], env=env, cwd=ROOT, check=True)
    return env


def _worker(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.accounts.spend_worker", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_workers(env: dict, email: str, *, processes: int, threads: int, times: int, amount: int, go: Path) -> int:
    """Start the workers, let them all go at once, and answer what they spent."""
    env = {**env, "HERDER_TEST_GO": str(go)}
    workers = [_worker(env, "spend", email, str(threads), str(times), str(amount)) for _ in range(processes)]
    for worker in workers:
        line = worker.stdout.readline()
        assert line == "ready\n", worker.communicate(timeout=60)[1]
    go.touch()
    outputs = [worker.communicate(timeout=180) for worker in workers]
    assert [w.returncode for w in workers] == [0] * processes, [err for _, err in outputs]
    return sum(int(out) for out, _ in outputs)


def _report(env: dict, email: str) -> dict:
    report = _worker(env, "report", email)
    out, err = report.communicate(timeout=60)
    assert report.returncode == 0, err
    return json.loads(out)


@pytest.mark.django_db(transaction=True)
def test_concurrent_spending_from_processes_and_threads_never_overdraws(worker_env, tmp_path):
    assert _worker(worker_env, "setup", "dave@herder.test", str(CREDITS)).wait() == 0

    spent = _run_workers(worker_env, "dave@herder.test", processes=4, threads=3, times=40, amount=9, go=tmp_path / "go")

    assert spent == CREDITS  # 4 * 3 * 40 * 9 asked for: only what there was is taken
    report = _report(worker_env, "dave@herder.test")
    assert report["balance"] == 0 == report["ledger"]


@pytest.mark.django_db(transaction=True)
def test_concurrent_spending_from_processes_and_threads_keeps_the_ledger_exact(worker_env, tmp_path):
    assert _worker(worker_env, "setup", "erin@herder.test", str(CREDITS * 10)).wait() == 0

    spent = _run_workers(worker_env, "erin@herder.test", processes=4, threads=3, times=40, amount=7, go=tmp_path / "go")

    assert spent == 4 * 3 * 40 * 7
    report = _report(worker_env, "erin@herder.test")
    assert report == {"balance": CREDITS * 10 - spent, "ledger": CREDITS * 10 - spent, "spends": 4 * 3 * 40}
