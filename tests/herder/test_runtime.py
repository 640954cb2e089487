"""The runtime layer against the real engine."""

import time

import pytest
from django.test import override_settings

from herder.errors import ImageMissing, RuntimeUnavailable
from herder.runtime import ContainerGone, ContainerSpec, Handle, get_runtime
from minions import runner

pytestmark = pytest.mark.docker

IMAGE = "herder/minion-python:latest"
OWNER = "herder-test-runtime"


def spec(**overrides) -> ContainerSpec:
    values = dict(
        kind="minion",
        owner=OWNER,
        image=IMAGE,
        command=["sleep", "30"],
        user="65534:65534",
        name=f"herder-test-{time.monotonic_ns()}",
    )
    values.update(overrides)
    return ContainerSpec(**values)


@pytest.fixture
def runtime(docker_engine):
    yield docker_engine
    for info in docker_engine.list(owner=OWNER):
        docker_engine.remove(info.handle)


def test_containers_carry_kind_and_owner_labels(runtime):
    handle = runtime.start(spec(labels={"herder.env": "python"}))

    [info] = runtime.list(kind="minion", owner=OWNER)
    assert info.handle.id == handle.id
    assert info.handle.name == handle.name
    assert (info.kind, info.owner, info.labels["herder.env"]) == ("minion", OWNER, "python")
    assert runtime.list(kind="golem", owner=OWNER) == []


def test_poll_stop_and_remove_are_idempotent(runtime):
    handle = runtime.start(spec())
    assert runtime.poll(handle) is None

    runtime.stop(handle, now=True)
    assert runtime.poll(handle) == 137
    runtime.stop(handle)  # already stopped

    runtime.remove(handle)
    runtime.remove(handle)  # already gone
    with pytest.raises(ContainerGone):
        runtime.poll(handle)
    runtime.stop(Handle(id="0" * 64, name="missing"))


def test_files_go_in_and_come_out_through_the_api(runtime):
    handle = runtime.start(spec(read_only=False))
    runtime.put_archive(handle, "/tmp", {"sub/a.txt": b"alpha"})

    assert runtime.get_file(handle, "/tmp/sub/a.txt", limit=100) == b"alpha"
    assert runtime.get_file(handle, "/tmp/sub/a.txt", limit=2) is None
    assert runtime.get_file(handle, "/tmp/missing", limit=100) is None


def test_attached_run_sees_all_output_from_the_start(runtime):
    handle, attachment = runtime.start_attached(
        spec(
            command=["--serve"],
            stdin=True,
            auto_remove=True,
            user="0:0",
            cap_add=["SETUID", "SETGID", "KILL"],
            read_only=True,
            keep_logs=False,
            tmpfs={"/minion": "size=8m,uid=65534,mode=0755"},
        )
    )
    try:
        assert runner.await_ready(attachment, timeout=10), "no ready signal from the runner"
        nonce = runner.new_nonce()
        outcome = runner.exchange(
            attachment,
            nonce=nonce,
            deadline=time.monotonic() + 20,
            output_cap=1024,
            file_cap=1024,
            request=runner.encode_request(
                nonce=nonce,
                output="r.txt",
                timeout=10,
                file_cap=1024,
                files={"main.sh": b"echo out; echo err >&2; echo file > r.txt"},
            ),
        )
    finally:
        attachment.close()
    assert (outcome.stdout, outcome.stderr, outcome.exit_code, outcome.output) == (b"out\n", b"err\n", 0, b"file\n")
    assert outcome.finished


def test_missing_image_says_so(runtime):
    with pytest.raises(ImageMissing):
        runtime.start(spec(image="herder/no-such-image:latest"))
    assert runtime.image_exists(IMAGE)
    assert not runtime.image_exists("herder/no-such-image:latest")


def test_unreachable_engine_is_runtime_unavailable():
    with override_settings(DOCKER_HOST="unix:///nonexistent/docker.sock"), pytest.raises(RuntimeUnavailable):
        get_runtime().list()
