import pytest
from rest_framework.test import APIClient

from accounts.services import token_authenticate, token_mint
from herder.runtime import get_runtime

ECHO = "herder/daemon-echo:latest"


class Holder:
    """An account with a token and an API client that sends it."""

    def __init__(self, email: str, credits: int) -> None:
        self.token = token_mint(email=email, credits=credits)
        self.account, self.token_row = token_authenticate(self.token)
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {self.token}")

    def spawn(self, name="echo", image=ECHO, ports='["8080"]', **files):
        return self.client.post("/daemon/v1/spawn", {"name": name, "image": image, "ports": ports, **files})


@pytest.fixture(scope="session")
def echo_image_current():
    """The daemon-echo image as this tree's deploy/images/daemon-echo describes
    it: build-images.sh rebuilds it when its folder changed (a no-op otherwise).
    Trees on one engine share the tag: an older tree's build lacks the pages,
    cookies and sleeps these tests use."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    subprocess.run(["bash", "deploy/build-images.sh", "daemon-echo"], cwd=root, check=True, stdout=subprocess.DEVNULL)


@pytest.fixture(autouse=True)
def daemon_images(settings, request):
    if request.node.get_closest_marker("docker") is not None:
        request.getfixturevalue("echo_image_current")
    settings.HERDER_DAEMON_IMAGES = [ECHO]


@pytest.fixture
def daemon_cleanup(docker_engine):
    """Remove every daemon container, network and volume this run's test made
    (other runs may share the engine: only this run's instance label)."""
    from daemons.models import Daemon

    yield
    for info in docker_engine.list(kind="daemon", ours=True):
        docker_engine.remove(info.handle)
    for network in docker_engine.networks(kind="daemon", ours=True):
        docker_engine.network_remove(network.name)
    for daemon in Daemon.objects.all():
        docker_engine.remove_volume(daemon.volume)
    assert get_runtime().list(kind="daemon", ours=True) == []


@pytest.fixture
def alice(db, daemon_cleanup):
    return Holder("alice@herder.test", 100_000)


@pytest.fixture
def bob(db, daemon_cleanup):
    return Holder("bob@herder.test", 100_000)
