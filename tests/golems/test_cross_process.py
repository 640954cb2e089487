"""Pairing across two herder processes (Daphne) sharing a real Redis and one database."""

from __future__ import annotations

import json
import os
import time
import uuid
from contextlib import ExitStack

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.golems.conftest import Herder, herder_env, migrate

HEARTBEAT = 0.5


@pytest.fixture(params=["link", "redis"])
def herders(tmp_path, request):
    """Two herder processes on one Redis and one SQLite file; they relay to each
    other over the link of this host's processes, or (HERDER_RELAY_LINK=false)
    through Redis, as herders on two hosts do."""
    redis_url = os.environ.get("HERDER_TEST_REDIS_URL")
    if not redis_url:
        pytest.fail(
            "HERDER_TEST_REDIS_URL is not set: start Redis (deploy/start-services.sh) "
            "and export it, as deploy/test.sh does."
        )
    env = herder_env(
        tmp_path,
        REDIS_URL=redis_url,
        HERDER_PAIRING_HEARTBEAT=str(HEARTBEAT),
        HERDER_GOLEM_WAIT="5",
        HERDER_RELAY_LINK="true" if request.param == "link" else "false",
    )
    migrate(env)
    started = []
    try:
        for name in ("a", "b"):
            started.append(Herder(env=env, log=tmp_path / f"herder-{name}.log"))
        yield started
    finally:
        for herder in started:
            herder.stop()
        for herder in started:
            print(f"--- herder on port {herder.port}\n{herder.output()}")


def event(ws, timeout: float = 5) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def closed_code(ws, timeout: float = 5) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=timeout)
    return closed.value.rcvd.code


def test_golem_on_one_process_and_minion_on_another_talk_both_ways(herders):
    a, b = herders
    webstrate = f"cross-{uuid.uuid4().hex[:8]}"
    with connect(f"{a.ws}/golem/v1/connect/{webstrate}") as control:
        # The control socket is unique across processes.
        with connect(f"{b.ws}/golem/v1/connect/{webstrate}") as second:
            assert event(second)["code"] == "golem_connected"
            assert closed_code(second) == 4409

        # Idle sockets outlive the Redis client's read timeout (5 s by default in redis-py 8).
        time.sleep(7)
        with connect(f"{b.ws}/minion/v1/connect/{webstrate}?type=python") as minion:
            connected = event(control)
            assert connected["Event"] == "minion-connected" and connected["Type"] == "python"
            with connect(f"{a.ws}/golem/v1/connect-to/{webstrate}/{connected['ID']}") as golem:
                assert event(minion) == {"Event": "golem-connected"}
                minion.send("hello")
                assert golem.recv(timeout=5) == "hello"
                golem.send("HELLO")
                assert minion.recv(timeout=5) == "HELLO"
                golem.send(b"\x00\xffbinary")
                assert minion.recv(timeout=5) == b"\x00\xffbinary"
                for i in range(200):
                    minion.send(f"m{i}")
                    golem.send(i.to_bytes(2, "big"))
                assert [golem.recv(timeout=5) for _ in range(200)] == [f"m{i}" for i in range(200)]
                assert [minion.recv(timeout=5) for _ in range(200)] == [i.to_bytes(2, "big") for i in range(200)]
                minion.close()
                assert event(golem) == {"Event": "minion-disconnected", "ID": connected["ID"]}
                assert closed_code(golem) == 1000
            assert event(control) == {"Event": "minion-disconnected", "ID": connected["ID"]}


def test_a_crashed_process_leaves_no_golem_connected(herders):
    a, b = herders
    webstrate = f"crash-{uuid.uuid4().hex[:8]}"
    with ExitStack() as sockets:
        control = sockets.enter_context(connect(f"{a.ws}/golem/v1/connect/{webstrate}"))
        minion = sockets.enter_context(connect(f"{b.ws}/minion/v1/connect/{webstrate}?type=survivor"))
        connected = event(control)
        sockets.enter_context(connect(f"{a.ws}/golem/v1/connect-to/{webstrate}/{connected['ID']}"))
        assert event(minion) == {"Event": "golem-connected"}

        a.stop(kill=True)
        started = time.monotonic()
        # The minion on the surviving process hears that its golem is gone...
        assert event(minion, timeout=10) == {"Event": "golem-disconnected"}
        assert time.monotonic() - started < 6 * HEARTBEAT + 2
        # ...and once the dead process's presence expires, a new golem takes over;
        # the minion, still waiting, presents itself to it.
        deadline = time.monotonic() + 10
        while True:
            fresh = sockets.enter_context(connect(f"{b.ws}/golem/v1/connect/{webstrate}"))
            answer = event(fresh)
            if answer.get("Event") == "minion-connected":
                break
            assert answer["code"] == "golem_connected"
            assert time.monotonic() < deadline, "the dead process's golem stayed connected"
            time.sleep(HEARTBEAT)
        assert answer == {"Event": "minion-connected", "ID": connected["ID"], "Type": "survivor"}
        with connect(f"{b.ws}/golem/v1/connect-to/{webstrate}/{connected['ID']}") as golem:
            assert event(minion) == {"Event": "golem-connected"}
            minion.send("after the crash")
            assert golem.recv(timeout=5) == "after the crash"
