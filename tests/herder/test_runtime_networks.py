"""Networks the runtime creates for golems: isolated bridges, made once."""

import uuid

import pytest

pytestmark = pytest.mark.docker


def test_ensure_network_makes_an_isolated_bridge_once(docker_engine):
    name = f"herder-test-net-{uuid.uuid4().hex[:8]}"
    # A network whose name merely contains ours is not ours.
    docker_engine.ensure_network(name + "-longer", labels={"herder.network": "test"})
    try:
        docker_engine.ensure_network(name, labels={"herder.network": "test"})
        docker_engine.ensure_network(name)  # already there: nothing changes
        found = [n for n in docker_engine.client.api.networks(names=[name]) if n["Name"] == name]
        assert len(found) == 1
        network = docker_engine.client.api.inspect_network(found[0]["Id"])
        assert network["Driver"] == "bridge" and network["Labels"] == {"herder.network": "test"}
        # Its containers cannot reach each other.
        assert network["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    finally:
        docker_engine.remove_network(name)
        docker_engine.remove_network(name + "-longer")
    docker_engine.remove_network(name)  # gone already: still fine
    assert [n for n in docker_engine.client.api.networks(names=[name]) if n["Name"] == name] == []
