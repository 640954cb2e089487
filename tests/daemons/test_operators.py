"""What operators and owners do with stopped daemons' volumes, and the admin's
daemon buttons, against the real engine."""

from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.utils import timezone

from daemons.models import Daemon
from daemons.services import daemon_reap_volumes
from herder.runtime import get_runtime
from tests.daemons.test_daemons import spawn_ready

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


def volume_exists(name: str) -> bool:
    return [v.name for v in get_runtime().volumes(prefix=name)] == [name]


def operator() -> Client:
    User.objects.create_superuser("operator", "op@herder.test", "pw")
    client = Client()
    client.login(username="operator", password="pw")
    return client


def test_kill_with_wipe_after_a_kill_removes_the_volume(alice, bob):
    spawn_ready(alice, name="files")
    daemon = Daemon.objects.get()
    assert alice.client.get("/daemon/v1/kill/files").status_code == 200
    assert volume_exists(daemon.volume)

    # Another account cannot wipe it; the owner can, once; then it is gone.
    assert bob.client.get("/daemon/v1/kill/files?wipe=true").status_code == 404
    assert volume_exists(daemon.volume)
    response = alice.client.get("/daemon/v1/kill/files?wipe=true")
    assert response.status_code == 200, response.content
    assert not volume_exists(daemon.volume)
    assert Daemon.objects.get().volume_removed is not None
    assert alice.client.get("/daemon/v1/kill/files?wipe=true").status_code == 404
    # Without wipe a killed daemon stays unknown, as before.
    assert alice.client.get("/daemon/v1/kill/files").status_code == 404
    # Spawned again, it has a volume again (empty), and the reaper may count it.
    spawn_ready(alice, name="files")
    assert Daemon.objects.get().volume_removed is None and volume_exists(daemon.volume)


def test_volumes_of_daemons_gone_past_the_retention_are_reaped(alice, settings):
    settings.HERDER_DAEMON_VOLUME_RETENTION = timedelta(days=30)
    spawn_ready(alice, name="old")
    spawn_ready(alice, name="recent")
    spawn_ready(alice, name="running")
    for name in ("old", "recent"):
        assert alice.client.get(f"/daemon/v1/kill/{name}").status_code == 200
    Daemon.objects.filter(name="old").update(stopped=timezone.now() - timedelta(days=31))
    volumes = {d.name: d.volume for d in Daemon.objects.all()}

    assert daemon_reap_volumes() == 1

    assert not volume_exists(volumes["old"])
    assert volume_exists(volumes["recent"]) and volume_exists(volumes["running"])
    assert Daemon.objects.get(name="old").volume_removed is not None
    settings.HERDER_DAEMON_VOLUME_RETENTION = timedelta(0)  # 0 keeps them forever
    Daemon.objects.filter(name="recent").update(stopped=timezone.now() - timedelta(days=400))
    assert daemon_reap_volumes() == 0 and volume_exists(volumes["recent"])


def test_the_daemon_page_stops_and_wipes_through_the_services_and_logs_it(alice):
    spawn_ready(alice, name="operated")
    daemon = Daemon.objects.get()
    client = operator()

    page = client.get(f"/admin/daemons/daemon/{daemon.pk}/change/")
    assert page.status_code == 200
    assert b"View daemon" in page.content and b'name="_save"' not in page.content
    assert b'id="daemon-stop"' in page.content and b'id="daemon-console"' in page.content
    # Wiping a running daemon's volume is refused: stop it first.
    client.post(f"/admin/daemons/daemon/{daemon.pk}/wipe/")
    assert volume_exists(daemon.volume) and Daemon.objects.get().volume_removed is None

    assert client.post(f"/admin/daemons/daemon/{daemon.pk}/stop/").status_code == 302
    assert Daemon.objects.get().state == "killed"
    assert get_runtime().list(kind="daemon", ours=True) == []
    assert b'id="daemon-wipe"' in client.get(f"/admin/daemons/daemon/{daemon.pk}/change/").content

    # The volume page lists it with its owner.
    volumes = client.get("/admin/daemons/daemon/volumes/")
    assert volumes.status_code == 200
    assert daemon.volume.encode() in volumes.content and b"alice@herder.test" in volumes.content

    assert client.post(f"/admin/daemons/daemon/{daemon.pk}/wipe/").status_code == 302
    assert not volume_exists(daemon.volume)
    messages = list(LogEntry.objects.filter(object_id=str(daemon.pk)).values_list("change_message", flat=True))
    assert "Stopped (volume kept)" in messages and f"Wiped volume {daemon.volume}" in messages


def test_view_only_staff_get_no_buttons_and_cannot_post_them(alice):
    spawn_ready(alice, name="watched")
    daemon = Daemon.objects.get()
    viewer = User.objects.create_user("viewer", "viewer@herder.test", "pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_daemon"))
    client = Client()
    client.login(username="viewer", password="pw")

    page = client.get(f"/admin/daemons/daemon/{daemon.pk}/change/")
    assert page.status_code == 200 and b'id="daemon-stop"' not in page.content
    assert client.post(f"/admin/daemons/daemon/{daemon.pk}/stop/").status_code == 403
    assert client.get(f"/admin/daemons/daemon/{daemon.pk}/console/").status_code == 403
    assert client.get(f"/admin/daemons/daemon/{daemon.pk}/stop/").status_code in (403, 405)
    assert Daemon.objects.get().state == "running"
    assert not LogEntry.objects.exists()
