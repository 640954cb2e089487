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
