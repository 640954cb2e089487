"""One spawn at a time owns a daemon: the claim on its row."""

from datetime import timedelta

import pytest
from django.utils import timezone

from daemons.models import Daemon
from daemons.services import container_name
from herder.runtime import get_runtime
from tests.daemons.test_daemons import spawn_ready

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


def test_a_spawn_in_progress_makes_another_409_daemon_busy(alice):
    spawn_ready(alice, name="busy")
    before = Daemon.objects.get()
    # Another spawn claimed it a moment ago and is still starting its container.
    Daemon.objects.filter(pk=before.pk).update(state="starting", claim="other", claimed=timezone.now())

    response = alice.spawn(name="busy")

    assert response.status_code == 409 and response.json()["code"] == "daemon_busy"
    after = Daemon.objects.get()
    assert (after.claim, after.container_id) == ("other", before.container_id)
    assert [c.handle.id for c in get_runtime().list(kind="daemon", ours=True)] == [before.container_id]


def test_a_claim_left_by_a_dead_herder_is_taken_over(alice):
    spawn_ready(alice, name="stale")
    before = Daemon.objects.get()
    Daemon.objects.filter(pk=before.pk).update(
        state="starting", claim="dead-process", container_id="", claimed=timezone.now() - timedelta(minutes=5)
    )

    spawn_ready(alice, name="stale")

    after = Daemon.objects.get()
    assert after.state == "running" and after.claim == "" and after.container_id != before.container_id
    containers = get_runtime().list(kind="daemon", ours=True)
    # The leftover (same name) went: one container, the recorded one.
    assert [(c.handle.id, c.handle.name) for c in containers] == [(after.container_id, container_name(after))]


def test_a_kill_takes_the_claim_of_a_spawn_in_progress(alice):
    spawn_ready(alice, name="late")
    daemon = Daemon.objects.get()
    # The kill lands while a spawn holds the claim: the spawn's recording
    # (conditional on its claim) finds nothing and it removes its container.
    from daemons.services import daemon_stop

    Daemon.objects.filter(pk=daemon.pk).update(
        state="starting", claim="spawning", container_id="", claimed=timezone.now()
    )
    daemon_stop(daemon, state="killed")
    recorded = Daemon.objects.filter(pk=daemon.pk, claim="spawning", state="starting").update(state="running")
    assert recorded == 0
    assert Daemon.objects.get().state == "killed"
