import pytest
from django.contrib.auth.models import User
from django.test import Client

from minions.models import MinionRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator_client():
    User.objects.create_superuser("operator", "op@herder.test", "pw")
    client = Client()
    client.login(username="operator", password="pw")
    return client


def test_runs_are_listed_searchable_and_read_only(operator_client):
    MinionRun.objects.create(env="python", image="i", webstrate="alpha-strate", client_addr="127.0.0.5", exit_code=0)
    MinionRun.objects.create(env="ruby", image="i", webstrate="beta-strate", exit_code=1, timed_out=True)

    page = operator_client.get("/admin/minions/minionrun/", {"q": "alpha-strate"})
    assert page.status_code == 200
    assert b"alpha-strate" in page.content and b"beta-strate" not in page.content

    filtered = operator_client.get("/admin/minions/minionrun/", {"timed_out__exact": "1"})
    assert b"beta-strate" in filtered.content and b"alpha-strate" not in filtered.content

    run = MinionRun.objects.get(webstrate="alpha-strate")
    detail = operator_client.get(f"/admin/minions/minionrun/{run.pk}/change/")
    assert detail.status_code == 200
    assert b'name="_save"' not in detail.content
    assert operator_client.get("/admin/minions/minionrun/add/").status_code == 403
