"""The data folder's files: created once, atomically, readable by the herder alone."""

import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from herder.secretfiles import create_once, private_dir, private_file, read_secret

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _racer(path: str, barrier, results) -> None:
    data = os.urandom(32).hex().encode()
    barrier.wait()
    create_once(Path(path), data)
    results.put(read_secret(Path(path), what="test"))


def test_concurrent_first_writers_all_read_the_same_secret(tmp_path):
    path = tmp_path / "secret"
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(str(path), barrier, results)) for _ in range(6)]
    for proc in procs:
        proc.start()
    seen = {results.get(timeout=60) for _ in procs}
    for proc in procs:
        proc.join(30)
    assert len(seen) == 1 and seen == {path.read_text()}
    assert _mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary file left


def _start_settings(data_dir: Path) -> subprocess.Popen:
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SECRET_KEY); print(s.HERDER_TOKEN_PRIVATE_KEY.strip().splitlines()[1])"
    )
    env = {**os.environ, "HERDER_DATA_DIR": str(data_dir), "DJANGO_SETTINGS_MODULE": "herder.settings"}
    for name in ("HERDER_SECRET_KEY", "HERDER_TOKEN_PRIVATE_KEY", "HERDER_TOKEN_PUBLIC_KEY", "DATABASE_URL"):
        env.pop(name, None)
    return subprocess.Popen(
        [PYTHON, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_two_herders_starting_at_once_get_the_same_keys_all_private(tmp_path):
    data = tmp_path / "data"
    procs = [_start_settings(data) for _ in range(2)]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert outputs[0][0] == outputs[1][0] and outputs[0][0].strip()

    assert _mode(data) == 0o700
    assert _mode(data / "secret_key") == 0o600
    assert _mode(data / "token_private.pem") == 0o600
    assert _mode(data / "herder.sqlite3") == 0o600
    assert (data / "secret_key").read_text() == outputs[0][0].splitlines()[0]


def test_files_from_before_are_tightened(tmp_path):
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "herder.sqlite3").write_bytes(b"")
    (data / "herder.sqlite3").chmod(0o644)
    (data / "secret_key").write_text("an old key that was world-readable")
    (data / "secret_key").chmod(0o644)

    out, err = _start_settings(data).communicate(timeout=120)

    assert out.splitlines()[0] == "an old key that was world-readable", err
    assert (_mode(data), _mode(data / "herder.sqlite3"), _mode(data / "secret_key")) == (0o700, 0o600, 0o600)


@pytest.mark.parametrize("name", ["secret_key", "token_private.pem"])
def test_an_empty_key_file_stops_the_start_with_a_clear_message(tmp_path, name):
    data = tmp_path / "data"
    private_dir(data)
    (data / name).write_bytes(b"")

    proc = _start_settings(data)
    out, err = proc.communicate(timeout=120)

    assert proc.returncode != 0 and out == ""
    assert "ImproperlyConfigured" in err and f"{data / name}" in err and "is empty" in err
    assert (data / name).read_bytes() == b""  # not silently replaced either


def test_read_secret_refuses_empty_and_binary_files(tmp_path):
    for content in (b"", b"  \n", b"\xff\xfe"):
        (tmp_path / "k").write_bytes(content)
        with pytest.raises(ImproperlyConfigured, match="is empty or not text"):
            read_secret(tmp_path / "k", what="test")


def test_a_writer_killed_before_its_write_completes_leaves_no_key(tmp_path):
    """The final name appears only complete: kill a writer stuck in its flush (a slow
    disk: os.fsync made to hang in that process), and no key file exists; the next
    start makes a whole one."""
    path = tmp_path / "secret"
    code = (
        "import os, time, sys; from pathlib import Path; "
        "os.fsync = lambda fd: (print('writing', flush=True), time.sleep(600)); "
        "from herder.secretfiles import create_once; create_once(Path(sys.argv[1]), b'x' * 64)"
    )
    proc = subprocess.Popen([PYTHON, "-c", code, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        temporaries = [p for p in tmp_path.iterdir() if p.name != "secret"]
        assert len(temporaries) == 1 and _mode(temporaries[0]) == 0o600
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()

    assert not path.exists()
    assert create_once(path, b"a whole key")
    assert read_secret(path, what="test") == "a whole key"


def test_private_file_creates_an_empty_file_0600_and_keeps_content(tmp_path):
    path = private_file(tmp_path / "db.sqlite3")
    assert path.read_bytes() == b"" and _mode(path) == 0o600
    path.write_bytes(b"rows")
    path.chmod(0o664)
    private_file(path)
    assert path.read_bytes() == b"rows" and _mode(path) == 0o600


def test_a_second_create_once_keeps_the_first_content(tmp_path):
    path = tmp_path / "secret"
    assert create_once(path, b"first")
    assert not create_once(path, b"second")
    assert path.read_bytes() == b"first"


def test_the_sqlite_file_logs_ahead_without_fsync_and_its_log_is_private_too(tmp_path):
    """WAL with synchronous=NORMAL: a commit costs no fsync (each minion run
    commits twice); the log files SQLite makes beside the database take its mode."""
    data = tmp_path / "data"
    code = (
        "import django; django.setup(); from django.db import connection; c = connection.cursor(); "
        "c.execute('PRAGMA journal_mode'); print(c.fetchone()[0]); "
        "c.execute('PRAGMA synchronous'); print(c.fetchone()[0]); "
        "c.execute('CREATE TABLE probe (n integer)'); c.execute('INSERT INTO probe VALUES (1)'); "
        "import os, stat; print(' '.join(oct(stat.S_IMODE(os.stat(p).st_mode)) "
        "for p in (connection.settings_dict['NAME'] + '-wal', connection.settings_dict['NAME'] + '-shm')))"
    )
    env = {**os.environ, "HERDER_DATA_DIR": str(data), "DJANGO_SETTINGS_MODULE": "herder.settings"}
    env.pop("DATABASE_URL", None)
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["wal", "1", "0o600 0o600"]  # 1: NORMAL
