"""A container serves several runs only with a complete reset between them."""

import time

import pytest
from django.test import Client

from herder.runtime import get_runtime
from minions import runner
from minions.models import MinionRun
from minions.pool import start_warm
from minions.services import minion_spec, pool

pytestmark = [pytest.mark.docker, pytest.mark.django_db]

LEAVE_TRACES = r"""
nohup sleep 300 >/dev/null 2>&1 &
( while true; do sleep 1; done ) >/dev/null 2>&1 &
echo secret > /minion/left.txt; echo secret > /tmp/.left; echo secret > /dev/shm/left
mkdir -p /minion/locked/deep && echo secret > /minion/locked/deep/f && chmod 000 /minion/locked
ipcmk -M 4096 >/dev/null; ipcmk -Q >/dev/null; ipcmk -S 1 >/dev/null
for status in /proc/[0-9]*/status; do
  pid=${status#/proc/}; pid=${pid%/status}
  if grep -q '^Uid:[[:space:]]*0[[:space:]]' "$status" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null && echo "killed root process $pid"
  fi
done
echo tampered >> /usr/local/bin/herder-run 2>/dev/null && echo "tampered with the runner"
echo traces-left
"""

LOOK_FOR_TRACES = r"""
ls -A /minion /tmp /dev/shm | grep -v -e '^$' -e ':$' -e '^main.sh$'
ipcs -m -q -s | grep '^0x'
for status in /proc/[0-9]*/status; do
  pid=${status#/proc/}; pid=${pid%/status}
  grep -q '^Uid:[[:space:]]*65534[[:space:]]' "$status" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" && echo
done
echo looked
"""


def run(script: str) -> tuple[dict, MinionRun]:
    result = Client().post("/minion/v1/spawn", {"env": "python", "main.sh": script}).json()
    return result, MinionRun.objects.latest("pk")


def test_the_next_run_in_a_container_finds_nothing_of_the_last(settings):
    settings.HERDER_MINION_POOL_SIZE = 1
    settings.HERDER_MINION_RUNS_PER_CONTAINER = 10

    first, first_run = run(LEAVE_TRACES)
    second, second_run = run(LOOK_FOR_TRACES)

    assert first["StdOut"] == "traces-left\n", first
    assert second_run.container == first_run.container, "the second run did not reuse the container"
    assert second_run.warm
    # Only the looking script's own processes, nothing else of the last run.
    lines = second["StdOut"].splitlines()
    assert lines[-1] == "looked"
    assert not any("sleep" in line for line in lines), second["StdOut"]
    assert not any(name in second["StdOut"] for name in ("left.txt", ".left", "left", "locked", "0x")), second


def test_one_run_per_container_means_a_fresh_container_each_time(settings):
    settings.HERDER_MINION_POOL_SIZE = 1
    settings.HERDER_MINION_RUNS_PER_CONTAINER = 1

    _, first = run("echo one")
    _, second = run("echo two")

    assert first.container != second.container


def test_many_runs_share_few_containers_and_all_succeed(settings):
    settings.HERDER_MINION_POOL_SIZE = 1
    settings.HERDER_MINION_RUNS_PER_CONTAINER = 5

    outputs = [run(f"echo {i}; echo {i} > /minion/n")[0]["StdOut"] for i in range(12)]

    assert outputs == [f"{i}\n" for i in range(12)]
    containers = set(MinionRun.objects.values_list("container", flat=True))
    assert 3 <= len(containers) <= 6
    pool.close()


def test_a_container_whose_minion_folder_is_the_user_s_serves_one_run_only():
    # Owning /minion, a run could leave extended attributes or a mode on it.
    spec = minion_spec(env="python", image="herder/minion-python:latest", owner="test")
    spec.tmpfs["/minion"] += ",uid=65534,gid=65534"
    warm = start_warm(spec, timeout=15)
    try:
        nonce = runner.new_nonce()
        outcome = runner.exchange(
            warm.attachment,
            nonce=nonce,
            deadline=time.monotonic() + 20,
            output_cap=1024,
            file_cap=1024,
            request=runner.encode_request(
                nonce=nonce, output=None, timeout=10, file_cap=1024, files={"main.sh": b"stat -c '%U %a' /minion"}
            ),
        )
        assert (outcome.exit_code, outcome.stdout) == (0, b"nobody 755\n")
        assert not runner.await_ready(warm.attachment, timeout=10, seen=outcome.after)
        assert warm.attachment.read_frame(timeout=10) is None, "the runner did not end"
    finally:
        warm.attachment.close()
        get_runtime().remove(warm.handle)
