import pytest
from django.contrib.auth.models import User
from django.test import Client

from daemons.models import Daemon
from herder.runtime import get_runtime
from tests.daemons.test_daemons import spawn_ready

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]


def test_operators_see_daemons_and_can_stop_them(alice, bob):
    spawn_ready(alice, name="audited")
    User.objects.create_superuser("operator", "op@herder.test", "pw")
    operator = Client()
    operator.login(username="operator", password="pw")

    page = operator.get("/admin/daemons/daemon/", {"q": "alice@herder.test"})
    assert page.status_code == 200 and b"audited-" in page.content
    assert b"audited-" not in operator.get("/admin/daemons/daemon/", {"q": "bob@herder.test"}).content
    assert b"audited-" in operator.get("/admin/daemons/daemon/", {"state__exact": "running"}).content

    daemon = Daemon.objects.get()
    response = operator.post("/admin/daemons/daemon/", {"action": "stop_daemons", "_selected_action": [daemon.pk]})
    assert response.status_code == 302

    assert Daemon.objects.get().state == "killed"
    assert get_runtime().list(kind="daemon", ours=True) == []


def test_deleting_a_running_daemon_in_the_admin_stops_it_first(alice):
    from daemons.services import container_name

    spawn_ready(alice, name="doomed")
    daemon = Daemon.objects.get()
    User.objects.create_superuser("operator", "op@herder.test", "pw")
    operator = Client()
    operator.login(username="operator", password="pw")

    response = operator.post(f"/admin/daemons/daemon/{daemon.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Daemon.objects.exists()
    assert get_runtime().list(kind="daemon", ours=True) == []
    assert container_name(daemon) not in [n.name for n in get_runtime().networks(kind="daemon", ours=True)]
    assert daemon.volume not in [v["Name"] for v in get_runtime().client.api.volumes()["Volumes"] or []]


def test_bulk_deleting_daemons_in_the_admin_stops_them(alice):
    spawn_ready(alice, name="one")
    spawn_ready(alice, name="two")
    User.objects.create_superuser("operator", "op@herder.test", "pw")
    operator = Client()
    operator.login(username="operator", password="pw")

    response = operator.post(
        "/admin/daemons/daemon/",
        {
            "action": "delete_selected",
            "post": "yes",
            "_selected_action": list(Daemon.objects.values_list("pk", flat=True)),
        },
    )

    assert response.status_code == 302
    assert not Daemon.objects.exists()
    assert get_runtime().list(kind="daemon", ours=True) == []
