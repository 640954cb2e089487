"""Body caps and minion admission through a real `herd` (uvicorn) against the
real engine, with small limits: one run per client, two in total, a queue of
one. Clients are told apart by X-Forwarded-For (127.0.0.1 is a trusted proxy).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
MAX_BYTES = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def herd(tmp_path_factory, docker_engine):
    data = tmp_path_factory.mktemp("herd-limits")
    tmp = data / "tmp"
    tmp.mkdir()
    env = {
        **os.environ,
        "HERDER_DATA_DIR": str(data),
        "DJANGO_SETTINGS_MODULE": "herder.settings",
        # Where Django would spool bodies: watched by the tests.
        "TMPDIR": str(tmp),
        "HERDER_MINION_MAX_BYTES": str(MAX_BYTES),
        "HERDER_MINION_MAX_PER_CLIENT": "1",
        "HERDER_MINION_MAX_PER_ACCOUNT": "2",
        "HERDER_MINION_MAX_RUNNING": "2",
        "HERDER_MINION_QUEUE": "1",
        "HERDER_MINION_QUEUE_WAIT": "30",
        "HERDER_TRUSTED_PROXIES": "127.0.0.1",
        "HERDER_MINION_POOL_SIZE": "2",
    }
    env.pop("DATABASE_URL", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "manage.py", "herd", "--port", str(port), "--server", "uvicorn"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.monotonic() < deadline, process.stdout.read().decode()
            time.sleep(0.1)
    process.port, process.data, process.tmp, process.env = port, data, tmp, env
    yield process
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)


def spawn(herd, program: str, *, client: str, token: str | None = None) -> tuple[int, dict, dict]:
    """A python run as `client` (its X-Forwarded-For): status, JSON, headers."""
    body = urllib.parse.urlencode({"env": "python", "main.py": program}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{herd.port}/minion/v1/spawn", data=body, headers={"X-Forwarded-For": client}
    )
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read()), {k.lower(): v for k, v in answer.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), {k.lower(): v for k, v in error.headers.items()}


def pressure(herd) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{herd.port}/pressure", timeout=10) as answer:
        return json.loads(answer.read())


def wait_for(predicate, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Background(threading.Thread):
    def __init__(self, herd, program: str, client: str, token: str | None = None) -> None:
        super().__init__(daemon=True)
        self.args = (herd, program)
        self.kwargs = {"client": client, "token": token}
        self.answer = None
        self.start()

    def run(self) -> None:
        self.answer = spawn(*self.args, **self.kwargs)

    def result(self) -> tuple[int, dict, dict]:
        self.join(60)
        return self.answer


def raw(herd, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", herd.port))
    sock.sendall(head)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return answer


# --- Body caps ----------------------------------------------------------------


def test_a_declared_8_gib_body_is_refused_at_once_without_sending_it(herd):
    started = time.monotonic()
    sock = raw(
        herd,
        b"POST /minion/v1/spawn HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=B\r\n"
        + f"Content-Length: {8 * 1024**3}\r\n\r\n".encode(),
    )
    answer = read_answer(sock)
    sock.close()

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"code": "payload_too_large"' in answer
    assert time.monotonic() - started < 5  # not waiting for 8 GiB that never comes


def test_a_chunked_100_mib_stream_is_cut_off_near_the_cap(herd):
    before = dir_bytes(herd.data)
    sock = raw(
        herd,
        b"POST /minion/v1/spawn HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=B\r\n\r\n",
    )
    chunk = b"x" * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    sent = 0
    sock.settimeout(3)
    try:
        while sent < 100 * 1024 * 1024:
            sent += sock.send(frame)
    except (TimeoutError, ConnectionResetError, BrokenPipeError):
        pass  # the herder stopped reading, or closed the connection
    answer = read_answer(sock)
    sock.close()

    # What was sent before the herder stopped: the cap, plus what the
    # kernel's socket buffers held. Nowhere near 100 MiB.
    assert sent < MAX_BYTES + 1024 * 1024 + 16 * 1024 * 1024, sent
    assert answer == b"" or answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # Nothing was spooled to disk.
    assert dir_bytes(herd.tmp) == 0
    assert dir_bytes(herd.data) - before < MAX_BYTES


def test_a_chunked_daemon_spawn_without_a_token_is_answered_before_its_body(herd):
    """Daemon spawn needs a token: a stranger's large body is not read first."""
    sock = raw(
        herd,
        b"POST /daemon/v1/spawn HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: multipart/form-data; boundary=B\r\n\r\n",
    )
    answer = read_answer(sock)  # not one byte of the body sent
    sock.close()

    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"code": "invalid_token"' in answer


def test_a_small_chunked_multipart_form_runs(herd):
    body = (
        b'--B\r\nContent-Disposition: form-data; name="env"\r\n\r\npython\r\n'
        b"--B\r\nContent-Disposition: form-data; name=\"main.py\"\r\n\r\nprint('chunked')\r\n--B--\r\n"
    )
    half = len(body) // 2
    sock = raw(
        herd,
        b"POST /minion/v1/spawn HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
        b"Content-Type: multipart/form-data; boundary=B\r\n\r\n"
        + b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in (body[:half], body[half:]))
        + b"0\r\n\r\n",
    )
    sock.settimeout(60)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    sock.close()

    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["StdOut"] == "chunked\n"


# --- Minion admission ---------------------------------------------------------

SLOW = "import time; time.sleep(4); print('slow')"
QUICK = "print('quick')"


def test_runs_past_the_limits_wait_or_get_429_and_others_are_still_served(herd):
    # A runs one: its per-client limit.
    a1 = Background(herd, SLOW, "198.51.100.1")
    assert wait_for(lambda: pressure(herd)["minions"]["running"] == 1)
    # A's second waits in the queue...
    a2 = Background(herd, QUICK, "198.51.100.1")
    assert wait_for(lambda: pressure(herd)["minions"]["queued"] == 1)
    # ...and its third is refused at once.
    status, body, headers = spawn(herd, QUICK, client="198.51.100.1")
    assert status == 429 and body["code"] == "too_many_requests", body
    assert int(headers["retry-after"]) >= 1

    # Another client is served meanwhile, ahead of A's waiting run.
    status, body, _ = spawn(herd, QUICK, client="198.51.100.2")
    assert status == 200 and body["StdOut"] == "quick\n"
    assert a2.is_alive() and pressure(herd)["minions"]["queued"] == 1

    # B fills the total; the queue holds A's second: a third client is refused.
    b2 = Background(herd, SLOW, "198.51.100.2")
    assert wait_for(lambda: pressure(herd)["minions"]["running"] == 2)
    status, body, headers = spawn(herd, QUICK, client="198.51.100.3")
    assert status == 429 and "retry-after" in headers

    # When A's first run ends, its queued run runs.
    assert a1.result()[0] == 200
    status, body, _ = a2.result()
    assert status == 200 and body["StdOut"] == "quick\n"
    assert b2.result()[0] == 200

    refusals = pressure(herd)["refusals"]["recent"]
    assert refusals.get("minion_per_client", 0) >= 1 and refusals.get("minion_queue_full", 0) >= 1
    assert pressure(herd)["minions"] | {"running": 0, "queued": 0} == pressure(herd)["minions"]


def test_a_token_holder_counts_by_account_with_its_own_limit(herd):
    token = subprocess.run(
        [sys.executable, "manage.py", "mint_token", "-e", "limits@herder.test", "-c", "0"],
        cwd=ROOT,
        env=herd.env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Two at once from one address: the account's limit is 2, an address's 1.
    first = Background(herd, SLOW, "198.51.100.9", token)
    second = Background(herd, SLOW, "198.51.100.9", token)
    assert wait_for(lambda: pressure(herd)["minions"]["running"] == 2)
    assert first.result()[0] == 200 and second.result()[0] == 200

    # A bad token is ignored, as on every public route: the client is its address.
    status, body, _ = spawn(herd, QUICK, client="198.51.100.9", token=token + "x")
    assert status == 200 and body["StdOut"] == "quick\n"


def test_pressure_is_json_with_limits(herd):
    answer = pressure(herd)
    assert answer["minions"]["max_running"] == 2 and answer["minions"]["max_per_client"] == 1
    assert answer["minions"]["queue"] == 1
    assert "recent" in answer["refusals"]
    # Golems and sockets against their limits (golems/services.py, herder/wslimits.py).
    assert answer["golems"]["limit"] >= 1 and answer["golems"]["in_use"] == 0
    assert answer["sockets"]["limit"] >= 1 and "in_use" in answer["sockets"]


def test_a_waiting_run_holds_no_thread_and_leaves_the_queue_when_its_client_does(herd):
    running = Background(herd, SLOW, "198.51.100.20")
    assert wait_for(lambda: pressure(herd)["minions"]["running"] >= 1)
    threads = len(os.listdir(f"/proc/{herd.pid}/task"))

    body = urllib.parse.urlencode({"env": "python", "main.py": QUICK}).encode()
    waiting = raw(
        herd,
        b"POST /minion/v1/spawn HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 198.51.100.20\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode() + body,
    )
    assert wait_for(lambda: pressure(herd)["minions"]["queued"] == 1)
    assert len(os.listdir(f"/proc/{herd.pid}/task")) <= threads

    waiting.close()
    assert wait_for(lambda: pressure(herd)["minions"]["queued"] == 0, seconds=3)
    assert running.result()[0] == 200
