"""The original herder's clients, unchanged: ad-hoc minions written with the client
libraries its users wrote them with, against a real herder on uvicorn and on Daphne.

- Node, the `ws` package with its defaults: offers permessage-deflate, speaks before
  any golem exists, connects without `?type`.
- Go, golang.org/x/net/websocket: sends an Origin of another host and reads into a
  512-byte buffer, so frames reach it in chunks.

The golem side is a Python `websockets` client playing the golem (its control socket
and its connect-to), as the golem's page does in Chromium (tests/golems/test_golem_e2e.py).
"""

from __future__ import annotations

import base64
import json
import os
import uuid

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.compat.conftest import GOLEM_WAIT, GoClient, NodeClient, webstrate_id

OTHER_ORIGIN = "http://elsewhere.example"


def event(ws, timeout: float = 10) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def closed_code(ws, timeout: float = 10) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=timeout)
    return closed.value.rcvd.code


def test_a_node_ws_minion_that_speaks_before_any_golem(herd, clients, node_program):
    webstrate = webstrate_id("node")
    minion = clients(NodeClient, [*node_program, f"{herd.ws}/minion/v1/connect/{webstrate}"])
    opened = minion.next()
    assert "open" in opened, opened
    # ws offers permessage-deflate by default; the herder, as the original, takes no extension.
    assert opened["open"]["extensions"] == "", opened
    # Before any golem exists: kept, and relayed once the golem connects to it.
    minion.send_text("early, before the golem")
    minion.send_binary(b"\x00\x01early binary\xff")

    with connect(f"{herd.ws}/golem/v1/connect/{webstrate}") as control:
        connected = event(control)
        # No ?type: the original's empty type.
        assert connected == {"Event": "minion-connected", "ID": connected["ID"], "Type": ""}
        assert str(uuid.UUID(connected["ID"])) == connected["ID"]
        with connect(f"{herd.ws}/golem/v1/connect-to/{webstrate}/{connected['ID']}") as golem:
            assert minion.event() == {"Event": "golem-connected"}
            assert golem.recv(timeout=10) == "early, before the golem"
            assert golem.recv(timeout=10) == b"\x00\x01early binary\xff"

            # Both ways, text stays text and binary stays binary; big frames too.
            golem.send("héllo ☃ from the golem")
            big_text = "webstrates " * 20000
            golem.send(big_text)
            noise = os.urandom(70000)
            golem.send(noise)
            assert minion.next() == {"text": "héllo ☃ from the golem"}
            assert minion.next() == {"text": big_text}
            assert minion.next()["binary"] == base64.b64encode(noise).decode()
            minion.send_text('{"not": "an event"}')
            minion.send_binary(noise[:1000])
            minion.send_text(big_text)
            assert golem.recv(timeout=10) == '{"not": "an event"}'
            assert golem.recv(timeout=10) == noise[:1000]
            assert golem.recv(timeout=10) == big_text
        # The golem's socket went away: the minion stays, and is told.
        assert minion.event() == {"Event": "golem-disconnected"}

        # The golem connects to it again (as after a reload), then the minion leaves.
        with connect(f"{herd.ws}/golem/v1/connect-to/{webstrate}/{connected['ID']}") as golem:
            assert minion.event() == {"Event": "golem-connected"}
            minion.tell(close=1000)
            assert event(golem) == {"Event": "minion-disconnected", "ID": connected["ID"]}
            assert closed_code(golem) == 1000
        assert minion.next() == {"close": {"code": 1000, "reason": ""}}
        assert event(control) == {"Event": "minion-disconnected", "ID": connected["ID"]}


def test_a_go_x_net_minion_from_another_origin_reading_512_bytes_at_a_time(herd, clients, go_program):
    webstrate = webstrate_id("go")
    with connect(f"{herd.ws}/golem/v1/connect/{webstrate}") as control:
        minion = clients(GoClient, [*go_program, f"{herd.ws}/minion/v1/connect/{webstrate}?type=go", OTHER_ORIGIN])
        assert minion.next() == {"open": True}
        connected = event(control)
        assert connected == {"Event": "minion-connected", "ID": connected["ID"], "Type": "go"}
        with connect(f"{herd.ws}/golem/v1/connect-to/{webstrate}/{connected['ID']}") as golem:
            minion.expect_event({"Event": "golem-connected"})
            text = "".join(chr(0x41 + i % 26) for i in range(2000))
            data = bytes(range(256)) * 6
            golem.send(text)
            golem.send(data)
            minion.expect(text.encode())
            minion.expect(data)
            # Every read is at most its 512-byte buffer: the frames came in pieces.
            assert max(minion.chunks) <= 512 and len(minion.chunks) >= 1 + 4 + 3, minion.chunks

            minion.send_text("from go")
            minion.send_binary(b"\x00go binary\xff")
            assert golem.recv(timeout=10) == "from go"
            assert golem.recv(timeout=10) == b"\x00go binary\xff"
        minion.expect_event({"Event": "golem-disconnected"})

        with connect(f"{herd.ws}/golem/v1/connect-to/{webstrate}/{connected['ID']}") as golem:
            minion.expect_event({"Event": "golem-connected"})
            minion.tell(close=True)
            assert event(golem) == {"Event": "minion-disconnected", "ID": connected["ID"]}
        assert event(control) == {"Event": "minion-disconnected", "ID": connected["ID"]}
        assert "end" in minion.next()


def test_both_minions_hear_golem_not_found(herd, clients, node_program, go_program):
    webstrate = webstrate_id("alone")
    node = clients(NodeClient, [*node_program, f"{herd.ws}/minion/v1/connect/{webstrate}?type=node"])
    go = clients(GoClient, [*go_program, f"{herd.ws}/minion/v1/connect/{webstrate}", OTHER_ORIGIN])
    assert "open" in node.next() and go.next() == {"open": True}
    timeout = GOLEM_WAIT + 10
    assert node.event(timeout) == {"Event": "golem-not-found", "ID": webstrate}
    assert node.next() == {"close": {"code": 4404, "reason": ""}}
    go.expect_event({"Event": "golem-not-found", "ID": webstrate}, timeout)
    assert "end" in go.next()


# --- Refusals: HTTP statuses before the upgrade (uvicorn), else close codes (Daphne) --


def refused_status(url: str) -> tuple[int, dict]:
    with pytest.raises(InvalidStatus) as refused:
        with connect(url, open_timeout=10):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body)


@pytest.mark.parametrize("herd", ["uvicorn"], indirect=True)
def test_refused_before_the_upgrade_with_the_originals_statuses(herd, clients, node_program, go_program):
    webstrate = webstrate_id("refused")
    control_url = f"{herd.ws}/golem/v1/connect/{webstrate}"
    with connect(control_url) as control:
        # A second control socket: HTTP 409, whichever client asks.
        status, body = refused_status(control_url)
        assert status == 409 and body["code"] == "golem_connected", body
        node = clients(NodeClient, [*node_program, control_url])
        refused = node.next()["refused"]
        assert refused["status"] == 409 and json.loads(refused["body"])["code"] == "golem_connected"
        go = clients(GoClient, [*go_program, control_url, OTHER_ORIGIN])
        assert go.next()["dial_error"].endswith(": bad status")  # x/net reports no status code

        # connect-to a minion nobody knows: HTTP 404.
        unknown = f"{herd.ws}/golem/v1/connect-to/{webstrate}/{uuid.uuid4()}"
        status, body = refused_status(unknown)
        assert status == 404 and body["code"] == "minion_not_found", body
        node = clients(NodeClient, [*node_program, unknown])
        refused = node.next()["refused"]
        assert refused["status"] == 404 and json.loads(refused["body"])["code"] == "minion_not_found"

        # The first control socket still holds the webstrate; a paired minion is a 409.
        with connect(f"{herd.ws}/minion/v1/connect/{webstrate}?type=t") as minion:
            connected = event(control)
            assert connected["Event"] == "minion-connected"
            to_minion = f"{herd.ws}/golem/v1/connect-to/{webstrate}/{connected['ID']}"
            with connect(to_minion) as golem:
                assert event(minion) == {"Event": "golem-connected"}
                status, body = refused_status(to_minion)
                assert status == 409 and body["code"] == "minion_paired", body
                minion.send("still paired")
                assert golem.recv(timeout=10) == "still paired"


@pytest.mark.parametrize("herd", ["daphne"], indirect=True)
def test_refused_with_close_codes_where_the_server_cannot_answer_the_handshake(herd, clients, node_program):
    webstrate = webstrate_id("closed")
    control_url = f"{herd.ws}/golem/v1/connect/{webstrate}"
    with connect(control_url):
        node = clients(NodeClient, [*node_program, control_url])
        assert "open" in node.next()
        error = node.event()
        assert (error["type"], error["code"]) == ("error", "golem_connected")
        assert node.next() == {"close": {"code": 4409, "reason": ""}}

        node = clients(NodeClient, [*node_program, f"{herd.ws}/golem/v1/connect-to/{webstrate}/{uuid.uuid4()}"])
        assert "open" in node.next()
        error = node.event()
        assert (error["type"], error["code"]) == ("error", "minion_not_found")
        assert node.next() == {"close": {"code": 4404, "reason": ""}}
