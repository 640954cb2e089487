"""Networks the runtime creates for golems and daemons: isolated bridges, made once."""

import uuid

import pytest

pytestmark = pytest.mark.docker


def test_network_create_makes_an_isolated_bridge_once(docker_engine):
    name = f"herder-test-net-{uuid.uuid4().hex[:8]}"
    # A network whose name merely contains ours is not ours.
    docker_engine.network_create(name + "-longer", kind="test")
    try:
        assert docker_engine.network_create(name, kind="test", labels={"herder.network": "test"}) == name
        docker_engine.network_create(name, kind="test")  # already there: nothing changes
        found = [n for n in docker_engine.client.api.networks(names=[name]) if n["Name"] == name]
        assert len(found) == 1
        network = docker_engine.client.api.inspect_network(found[0]["Id"])
        assert network["Driver"] == "bridge"
        assert network["Labels"]["herder.network"] == "test" and network["Labels"]["herder.kind"] == "test"
        # Its containers cannot reach each other.
        assert network["Options"]["com.docker.network.bridge.enable_icc"] == "false"
        assert name in [n.name for n in docker_engine.networks(kind="test", ours=True)]
    finally:
        assert docker_engine.network_remove(name)
        docker_engine.network_remove(name + "-longer")
    assert docker_engine.network_remove(name)  # gone already: still fine
    assert [n for n in docker_engine.client.api.networks(names=[name]) if n["Name"] == name] == []
