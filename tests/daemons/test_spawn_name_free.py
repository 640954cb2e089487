"""A daemon spawn waits until the engine has let go of its container's name."""

import threading
import uuid

import pytest

from daemons.services import _free_name
from herder.runtime import ContainerGone, ContainerSpec, DockerRuntime, Handle, get_runtime


class RemovalUnderWay(DockerRuntime):
    """The real engine, whose first remove() returns before the container is gone,
    as remove() does when the engine answers 409 (another removal, the
    supervisor's, is under way): that removal finishes a moment later."""

    def __init__(self) -> None:
        super().__init__()
        self.first = True

    def remove(self, handle, *, volumes=False):
        if self.first:
            self.first = False
            threading.Timer(0.3, super().remove, args=(handle,)).start()
            return
        super().remove(handle, volumes=volumes)


@pytest.mark.docker
def test_free_name_waits_for_a_removal_under_way(docker_engine):
    name = f"herder-test-free-{uuid.uuid4().hex[:8]}"
    handle = docker_engine.start(
        ContainerSpec(kind="daemon", owner="test", image="herder/daemon-echo:latest", name=name, network="none")
    )
    try:
        runtime = RemovalUnderWay()
        _free_name(runtime, name)
        assert not runtime.first
        with pytest.raises(ContainerGone):
            get_runtime().poll(Handle(id=name, name=name))
    finally:
        get_runtime().remove(handle)
