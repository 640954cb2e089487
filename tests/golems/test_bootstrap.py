"""The bootstrap script webstrates include."""

import pytest
from django.test import Client


@pytest.mark.parametrize("path", ["/", "/golem/v1/"])
def test_bootstrap_script_names_the_herder_by_its_public_url(settings, path):
    settings.HERDER_PUBLIC_URL = "https://herder.example:8443"
    answer = Client().get(path, HTTP_ORIGIN="https://webstrates.example")
    assert answer.status_code == 200
    assert answer["Content-Type"].startswith("application/javascript")
    assert answer["Access-Control-Allow-Origin"] == "*"
    script = answer.content.decode()
    assert '{"url": "https://herder.example:8443", "ws": "wss://herder.example:8443"}' in script
    assert ".golem,#emet" in script and "/golem/v1/spawn/" in script
    assert "__CONFIG__" not in script and "__URL__" not in script


def test_bootstrap_uses_ws_for_an_http_herder(settings):
    settings.HERDER_PUBLIC_URL = "http://127.0.0.1:8000"
    script = Client().get("/").content.decode()
    assert '"ws": "ws://127.0.0.1:8000"' in script


def test_the_supervisor_runs_the_golem_duties():
    from golems.services import golem_reap_idle, golem_reconcile
    from herder.supervisor import Supervisor

    duties = Supervisor.from_settings().duties
    assert golem_reconcile in duties and golem_reap_idle in duties
