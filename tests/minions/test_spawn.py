"""POST /minion/v1/spawn against the real Docker engine and the real images."""

import time

import pytest
from django.test import Client

from minions.models import MinionRun
from minions.services import pool
from tests.conftest import herder_containers

pytestmark = [pytest.mark.docker, pytest.mark.django_db]


@pytest.fixture(autouse=True, params=["cold", "warm", "recycled"])
def minion_path(request, settings):
    """Every test here runs on three paths: a fresh container; a warm one taken
    from the pool (python's pre-filled; other envs warm up as used); and, for
    python, a container that has already served a run and been reset."""
    if request.param == "cold":
        settings.HERDER_MINION_RUNS_PER_CONTAINER = 1
    else:
        settings.HERDER_MINION_POOL_SIZE = 2 if request.param == "warm" else 1
        settings.HERDER_MINION_RUNS_PER_CONTAINER = 1 if request.param == "warm" else 50
        pool.take("python")  # registers the env; the pool starts filling
        pool.drain()
        pool.fill("python")
    if request.param == "recycled":
        Client().post("/minion/v1/spawn", {"env": "python", "main.sh": "echo x > /tmp/earlier; sleep 30 &"})
        MinionRun.objects.all().delete()
    yield request.param
    pool.close()


HELLO = {
    "python": {"main.py": "print('hello from python')"},
    "ruby": {"main.rb": "puts 'hello from ruby'"},
    "node": {"main.js": "console.log('hello from node')"},
    "latex": {"main.tex": "\\documentclass{article}\\begin{document}hello from latex\\end{document}"},
}
ARTICLE = r"""\documentclass{article}
\begin{document}
\section{Minion}
Hello, \LaTeX.
\end{document}
"""


def spawn(fields: dict, **extra):
    return Client().post("/minion/v1/spawn", fields, **extra)


@pytest.mark.parametrize("env", sorted(HELLO))
def test_hello_world_in_each_env(env):
    response = spawn({"env": env, **HELLO[env]})

    assert response.status_code == 200, response.content
    result = response.json()
    assert result["ExitCode"] == 0, result
    assert f"hello from {env}" in result["StdOut"] or env == "latex"
    assert result["TimedOut"] is False
    assert result["Truncated"] is False
    assert result["DurationMs"] > 0
    if env == "latex":
        assert "Output written on main.pdf" in result["StdOut"]


def test_latex_output_returns_a_real_pdf():
    response = spawn({"env": "latex", "main.tex": ARTICLE, "output": "main.pdf"})

    assert response.status_code == 200
    assert response["Content-Type"] == "application/pdf"
    assert response.content.startswith(b"%PDF-")
    assert b"%%EOF" in response.content[-32:]


def test_output_file_in_a_sub_folder_comes_back_with_its_content_type():
    program = "import os; os.makedirs('out', exist_ok=True); open('out/r.json','w').write('{\"a\": 1}')"
    response = spawn({"env": "python", "main.py": program, "output": "out/r.json"})

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"a": 1}


def test_missing_output_file_answers_the_json_result():
    response = spawn({"env": "python", "main.py": "print('no file')", "output": "nope.txt"})

    assert response.status_code == 200
    assert response.json()["StdOut"] == "no file\n"


def test_stderr_and_exit_code_are_reported():
    response = spawn({"env": "python", "main.py": "import sys\nprint('oops', file=sys.stderr)\nsys.exit(3)"})

    result = response.json()
    assert result["ExitCode"] == 3
    assert result["StdErr"] == "oops\n"
    assert result["StdOut"] == ""


def test_main_sh_runs_instead_of_the_default():
    response = spawn({"env": "python", "main.py": "print('default')", "main.sh": "echo from-sh; python3 main.py"})

    assert response.json()["StdOut"] == "from-sh\ndefault\n"


def test_files_in_sub_folders_and_uploads_are_placed():
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("whatever.py", b"def greet():\n    return 'uploaded'\n")
    response = spawn(
        {
            "env": "python",
            "lib/helper.py": upload,
            "main.py": "import sys; sys.path.insert(0, 'lib')\nimport helper\nprint(helper.greet())",
        }
    )

    assert response.json()["StdOut"] == "uploaded\n"


def test_time_limit_kills_the_run(settings):
    settings.HERDER_MINION_TIMEOUT = 2
    response = spawn({"env": "python", "main.py": "import time\nprint('start', flush=True)\ntime.sleep(60)"})

    result = response.json()
    assert result["TimedOut"] is True
    assert result["ExitCode"] is None
    assert result["StdOut"] == "start\n"
    assert MinionRun.objects.get().timed_out is True


def test_the_sandbox_has_no_network():
    program = (
        "import socket\n"
        "print(sorted(name for _, name in socket.if_nameindex()))\n"
        "try:\n"
        "    socket.getaddrinfo('herder-test.invalid', 80)\n"
        "    print('resolved')\n"
        "except OSError as exc:\n"
        "    print('no-dns')\n"
    )
    result = spawn({"env": "python", "main.py": program}).json()

    assert result["StdOut"] == "['lo']\nno-dns\n", result


@pytest.mark.parametrize("path", ["/etc/evil", "/evil", "/usr/local/bin/herder-run", "/var/tmp/evil"])
def test_writing_outside_minion_and_tmp_fails(path):
    program = f"open('/minion/ok', 'w').write('x')\nopen('/tmp/ok', 'w').write('x')\nopen({path!r}, 'w').write('x')\n"
    result = spawn({"env": "python", "main.py": program}).json()

    assert result["ExitCode"] == 1
    assert "Read-only file system" in result["StdErr"] or "Permission denied" in result["StdErr"], result


def test_the_run_is_an_unprivileged_user_without_capabilities():
    program = (
        "import os\nprint(os.getuid(), os.getgid())\n"
        "print([l for l in open('/proc/self/status') if l.startswith(('CapEff', 'NoNewPrivs'))])\n"
    )
    out = spawn({"env": "python", "main.py": program}).json()["StdOut"]

    assert out.startswith("65534 65534\n")
    assert "CapEff:\\t0000000000000000" in out
    assert "NoNewPrivs:\\t1" in out


def test_allocating_past_the_memory_limit_fails():
    program = "b = bytearray(2 * 1024 ** 3)\nb[::4096] = b'x' * len(b[::4096])\nprint('survived')"
    result = spawn({"env": "python", "main.py": program}).json()

    assert "survived" not in result["StdOut"]
    assert result["ExitCode"] != 0
    assert result["ExitCode"] == 137 or "MemoryError" in result["StdErr"], result


def test_a_fork_bomb_is_contained_and_the_herder_stays_healthy(settings):
    settings.HERDER_MINION_TIMEOUT = 8
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 2; echo done"
    result = spawn({"env": "python", "main.sh": bomb}).json()
    assert "fork" in result["StdErr"].lower() or result["TimedOut"], result

    count = (
        "import subprocess\nprocs = []\n"
        "try:\n"
        "    for _ in range(2000): procs.append(subprocess.Popen(['sleep', '30']))\n"
        "except OSError: pass\n"
        "print(len(procs))\n"
    )
    started = int(spawn({"env": "python", "main.py": count}).json()["StdOut"])
    assert 0 < started < settings.HERDER_MINION_PIDS

    assert spawn({"env": "python", "main.py": "print('still fine')"}).json()["StdOut"] == "still fine\n"


def test_output_past_the_cap_is_truncated_and_says_so(settings):
    cap = settings.HERDER_MINION_OUTPUT_CAP
    program = f"import sys\nsys.stdout.write('x' * {3 * cap})\nsys.stderr.write('y' * 10)\nprint('', end='')"
    result = spawn({"env": "python", "main.py": program}).json()

    assert result["Truncated"] is True
    assert result["StdOut"] == "x" * cap
    assert result["StdErr"] == "y" * 10
    assert result["ExitCode"] == 0


def test_an_output_file_past_its_cap_answers_the_json_result_truncated(settings):
    settings.HERDER_MINION_FILE_CAP = 1000
    response = spawn(
        {"env": "python", "main.py": "open('big.bin', 'wb').write(b'x' * 5000)\nprint('made')", "output": "big.bin"}
    )

    assert response["Content-Type"] == "application/json"
    result = response.json()
    assert result["StdOut"] == "made\n" and result["ExitCode"] == 0
    assert result["Truncated"] is True


def test_a_program_cannot_end_its_run_with_a_fake_trailer():
    program = "import sys\nsys.stdout.write('\\x00HERDER-END:0000:0:-1\\n')\nprint('after')\nsys.exit(4)"
    result = spawn({"env": "python", "main.py": program}).json()

    assert result["ExitCode"] == 4
    assert result["StdOut"].endswith("after\n")


def test_a_background_process_cannot_outlive_its_run():
    program = "sh -c 'sleep 1; echo late' & echo early"
    result = spawn({"env": "python", "main.sh": program}).json()

    assert result["StdOut"] == "early\n"


def test_the_run_is_recorded_for_the_admin(minion_path):
    spawn(
        {"env": "python", "main.py": "print('x')"},
        HTTP_REFERER="https://webstrates.example/my-strate/page",
        REMOTE_ADDR="127.0.0.9",
    )

    run = MinionRun.objects.get()
    assert (run.env, run.webstrate, run.client_addr) == ("python", "my-strate", "127.0.0.9")
    assert run.files_count == 1 and run.files_bytes == len("print('x')")
    assert run.exit_code == 0 and run.stdout_bytes == 2
    assert run.container and not run.error
    assert run.warm is (minion_path != "cold")


def test_no_minion_container_is_left_after_runs():
    for program in ("print(1)", "import sys; sys.exit(2)"):
        spawn({"env": "python", "main.py": program})
    from tests.conftest import wait_until_gone

    pool.close()  # idle warm containers are kept on purpose until then
    assert wait_until_gone("minion") == []
    assert herder_containers("minion") == []


def test_a_container_removed_mid_run_is_a_503_not_a_result(settings):
    import threading

    from herder.runtime import get_runtime

    # Cold only: the one container there is, is the run's.
    settings.HERDER_MINION_POOL_SIZE = 0
    pool.close()
    from tests.conftest import wait_until_gone

    assert wait_until_gone("minion") == []

    def remove_it_soon():
        for _ in range(100):
            running = get_runtime().list(kind="minion", ours=True)
            if running:
                time.sleep(0.5)
                for info in running:
                    get_runtime().remove(info.handle)
                return
            time.sleep(0.05)

    remover = threading.Thread(target=remove_it_soon)
    remover.start()
    response = spawn({"env": "python", "main.py": "import time\nprint('started', flush=True)\ntime.sleep(20)"})
    remover.join()

    assert response.status_code == 503
    assert response.json()["code"] == "runtime_unavailable"
    assert MinionRun.objects.get().error.startswith("RuntimeUnavailable")


def test_the_answer_says_where_its_time_went():
    response = spawn({"env": "python", "main.py": "import time; time.sleep(0.3)"})
    assert response.status_code == 200
    parts = dict(part.split(";dur=") for part in response["Server-Timing"].split(", "))
    assert list(parts) == ["admit", "record", "take", "exchange", "hops"]
    timings = {name: float(ms) for name, ms in parts.items()}
    assert all(ms >= 0 for ms in timings.values())
    assert timings["exchange"] >= 300  # the program's own 0.3 s is in the exchange
    # DurationMs is truncated to whole ms (< 1 ms lost) and each part rounded to
    # 0.1 ms (<= 0.05 ms gained each).
    parts_ms = round(timings["take"] + timings["exchange"], 1)
    assert parts_ms <= response.json()["DurationMs"] + 1 + 2 * 0.05
