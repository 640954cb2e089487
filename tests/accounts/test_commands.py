import os
import sqlite3
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from accounts.models import Account, Token
from accounts.services import token_authenticate

ROOT = Path(settings.BASE_DIR)


def mint(*args: str) -> str:
    out = StringIO()
    call_command("mint_token", *args, stdout=out)
    return out.getvalue().strip()


@pytest.mark.django_db
def test_mint_token_prints_a_token_with_the_default_credits():
    raw = mint("-e", "carol@herder.test")

    account, token = token_authenticate(raw)
    assert account.email == "carol@herder.test" and account.balance == 30000 and token.credits == 30000


@pytest.mark.django_db
def test_mint_token_takes_credits_and_adds_them_to_the_account():
    mint("--email", "carol@herder.test", "--credits", "10")
    raw = mint("-e", "carol@herder.test", "-c", "5")

    assert token_authenticate(raw)[0].balance == 15


@pytest.mark.django_db
@pytest.mark.parametrize(
    "args,message",
    [
        (["-e", "carol\tnewline"], "control, format or separator"),
        (["-e", "carol "], "whitespace"),
        (["-e", "carol@herder.test", "-c", "-5"], "at least 0|from 0"),
    ],
)
def test_mint_token_refuses_bad_input_with_a_clear_message(args, message):
    with pytest.raises(CommandError, match=message):
        mint(*args)

    assert not Account.objects.exists() and not Token.objects.exists()


@pytest.mark.django_db
def test_mint_token_requires_an_email():
    with pytest.raises(CommandError, match="email"):
        mint("-c", "5")


@pytest.mark.django_db
def test_mint_token_refuses_credits_that_are_not_a_number():
    with pytest.raises(CommandError, match="credits"):
        mint("-e", "carol@herder.test", "-c", "many")


def test_mint_token_works_while_the_herder_holds_the_database(tmp_path):
    """A real manage.py on a fresh data folder (keys made on first start), run
    while another process holds SQLite's write lock, as a busy herder does."""
    env = {**os.environ, "HERDER_DATA_DIR": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'herder.sqlite3'}"}
    for name in ("HERDER_TOKEN_PRIVATE_KEY", "HERDER_TOKEN_PUBLIC_KEY"):
        env.pop(name, None)
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)

    held = threading.Event()

    def hold_the_write_lock() -> None:
        db = sqlite3.connect(tmp_path / "herder.sqlite3", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(1.5)
        db.execute("COMMIT")
        db.close()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    held.wait()
    started = time.monotonic()
    result = subprocess.run(
        [*manage, "mint_token", "-e", "carol@herder.test", "-c", "77"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    holder.join()

    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started > 1.0  # it waited for the lock instead of failing
    assert result.stdout.count(".") == 2
    private = tmp_path / "token_private.pem"
    assert private.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "token_public.pem").exists()
    db = sqlite3.connect(tmp_path / "herder.sqlite3")
    assert db.execute("SELECT email, balance FROM accounts_account").fetchall() == [("carol@herder.test", 77)]
    db.close()
