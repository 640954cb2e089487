"""Pairing without a browser: the three sockets in one process (in-memory layer)."""

import asyncio
import json
import os
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from golems.models import GolemPresence
from herder.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def run(coroutine_function):
    return async_to_sync(coroutine_function)()


async def connect(path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path)
    connected, _ = await communicator.connect(timeout=5)
    assert connected, path
    return communicator


async def event(communicator, timeout: float = 5) -> dict:
    return json.loads(await communicator.receive_from(timeout))


async def close_code(communicator, timeout: float = 5) -> int | None:
    message = await communicator.receive_output(timeout)
    assert message["type"] == "websocket.close", message
    return message.get("code")


async def refused(path: str) -> tuple[dict, int]:
    communicator = await connect(path)
    error = await event(communicator)
    return error, await close_code(communicator)


async def pair(webstrate: str = "ws1", minion_type: str = "python"):
    """A golem control socket, a minion, and the golem's socket to it."""
    control = await connect(f"/golem/v1/connect/{webstrate}")
    minion = await connect(f"/minion/v1/connect/{webstrate}?type={minion_type}")
    connected = await event(control)
    assert connected["Event"] == "minion-connected"
    golem = await connect(f"/golem/v1/connect-to/{webstrate}/{connected['ID']}")
    assert await event(minion) == {"Event": "golem-connected"}
    return control, minion, golem, connected["ID"]


def test_minion_is_announced_paired_and_relayed_both_ways():
    async def scenario():
        control = await connect("/golem/v1/connect/ws1")
        minion = await connect("/minion/v1/connect/ws1?type=python")
        connected = await event(control)
        assert connected["Event"] == "minion-connected" and connected["Type"] == "python"
        assert set(connected) == {"Event", "ID", "Type"} and len(connected["ID"]) == 36

        golem = await connect(f"/golem/v1/connect-to/ws1/{connected['ID']}")
        assert await event(minion) == {"Event": "golem-connected"}

        await minion.send_to(text_data="hello")
        assert await golem.receive_from(5) == "hello"
        await golem.send_to(text_data="HELLO")
        assert await minion.receive_from(5) == "HELLO"

        # Binary frames stay binary, text stays text, and order holds both ways.
        payload = bytes(range(256)) * 4
        await golem.send_to(bytes_data=payload)
        await golem.send_to(text_data='{"not": "an event"}')
        assert await minion.receive_from(5) == payload
        assert await minion.receive_from(5) == '{"not": "an event"}'
        for i in range(300):
            await minion.send_to(text_data=str(i))
            await golem.send_to(bytes_data=i.to_bytes(2, "big"))
        assert [await golem.receive_from(5) for _ in range(300)] == [str(i) for i in range(300)]
        assert [await minion.receive_from(5) for _ in range(300)] == [i.to_bytes(2, "big") for i in range(300)]
        assert await control.receive_nothing(0.2)
        for communicator in (golem, minion, control):
            await communicator.disconnect()

    run(scenario)


def test_frames_a_minion_sends_before_pairing_reach_the_golem_in_order():
    async def scenario():
        control = await connect("/golem/v1/connect/ws1")
        minion = await connect("/minion/v1/connect/ws1?type=early")
        await minion.send_to(text_data="first")
        await minion.send_to(bytes_data=b"\x00second")
        connected = await event(control)
        golem = await connect(f"/golem/v1/connect-to/ws1/{connected['ID']}")
        assert await event(minion) == {"Event": "golem-connected"}
        assert await golem.receive_from(5) == "first"
        assert await golem.receive_from(5) == b"\x00second"
        for communicator in (golem, minion, control):
            await communicator.disconnect()

    run(scenario)


def test_minion_leaving_tells_the_golem_on_both_sockets():
    async def scenario():
        control, minion, golem, minion_id = await pair()
        await minion.disconnect()
        assert await event(golem) == {"Event": "minion-disconnected", "ID": minion_id}
        assert await close_code(golem) in (None, 1000)
        assert await event(control) == {"Event": "minion-disconnected", "ID": minion_id}
        await control.disconnect()

    run(scenario)


def test_golem_leaving_tells_the_minion_which_can_be_paired_again():
    async def scenario():
        control, minion, golem, minion_id = await pair()
        await golem.disconnect()
        assert await event(minion) == {"Event": "golem-disconnected"}
        # The minion stays connected; the golem may connect to it again.
        again = await connect(f"/golem/v1/connect-to/ws1/{minion_id}")
        assert await event(minion) == {"Event": "golem-connected"}
        await minion.send_to(text_data="still here")
        assert await again.receive_from(5) == "still here"
        for communicator in (again, minion, control):
            await communicator.disconnect()

    run(scenario)


def test_minion_waits_for_a_golem_that_comes_later():
    async def scenario():
        minion = await connect("/minion/v1/connect/later?type=patient")
        await asyncio.sleep(0.3)
        control = await connect("/golem/v1/connect/later")
        connected = await event(control)
        assert connected["Event"] == "minion-connected" and connected["Type"] == "patient"
        golem = await connect(f"/golem/v1/connect-to/later/{connected['ID']}")
        assert await event(minion) == {"Event": "golem-connected"}
        for communicator in (golem, minion, control):
            await communicator.disconnect()

    run(scenario)


def test_minion_gets_golem_not_found_after_the_wait(settings):
    settings.HERDER_GOLEM_WAIT = 0.5

    async def scenario():
        minion = await connect("/minion/v1/connect/nobody-home?type=x")
        assert await event(minion) == {"Event": "golem-not-found", "ID": "nobody-home"}
        assert await close_code(minion) == 4404

    run(scenario)


def test_a_golem_that_answers_stops_the_wait(settings):
    settings.HERDER_GOLEM_WAIT = 0.5

    async def scenario():
        control = await connect("/golem/v1/connect/ws1")
        minion = await connect("/minion/v1/connect/ws1")
        assert (await event(control))["Type"] == ""
        assert await minion.receive_nothing(1.0)
        for communicator in (minion, control):
            await communicator.disconnect()

    run(scenario)


def test_second_control_socket_is_refused_with_4409_until_the_first_leaves():
    async def scenario():
        first = await connect("/golem/v1/connect/ws1")
        error, code = await refused("/golem/v1/connect/ws1")
        assert error["type"] == "error" and error["code"] == "golem_connected" and error["detail"]
        assert code == 4409
        await first.disconnect()
        second = await connect("/golem/v1/connect/ws1")
        assert await second.receive_nothing(0.2)
        await second.disconnect()

    run(scenario)


def test_presence_left_by_a_dead_process_expires(settings):
    settings.HERDER_GOLEM_WAIT = 0.5
    old = timezone.now() - timedelta(seconds=3 * settings.HERDER_PAIRING_HEARTBEAT + 1)
    GolemPresence.objects.create(webstrate="ws1", channel="specific.dead!gone", connected=old, seen=old)

    async def scenario():
        # A minion is not fooled into waiting for the dead socket...
        minion = await connect("/minion/v1/connect/ws1")
        assert await event(minion) == {"Event": "golem-not-found", "ID": "ws1"}
        assert await close_code(minion) == 4404
        # ...and a new golem takes the webstrate over.
        control = await connect("/golem/v1/connect/ws1")
        assert await control.receive_nothing(0.2)
        await control.disconnect()

    run(scenario)
    assert not GolemPresence.objects.filter(webstrate="ws1").exists()


@pytest.mark.parametrize("bad", ["-starts-with-dash", "a" * 129, "sp%20ace", "%C3%A4", ".hidden"])
def test_bad_webstrate_ids_are_refused_on_every_socket(bad):
    minion_id = "0b7e4a52-6d0a-4c1e-9a7e-3c1f5d2e8b90"

    async def scenario():
        for path in (
            f"/golem/v1/connect/{bad}",
            f"/minion/v1/connect/{bad}?type=x",
            f"/golem/v1/connect-to/{bad}/{minion_id}",
        ):
            error, code = await refused(path)
            assert (error["type"], error["code"], code) == ("error", "bad_webstrate_id", 4400), path

    run(scenario)
    assert not GolemPresence.objects.exists()


def test_connect_to_refuses_unknown_bad_and_taken_minions(settings):
    settings.HERDER_PAIRING_REPLY_TIMEOUT = 0.5

    async def scenario():
        error, code = await refused("/golem/v1/connect-to/ws1/not-a-uuid")
        assert (error["code"], code) == ("bad_minion_id", 4400)
        error, code = await refused("/golem/v1/connect-to/ws1/0b7e4a52-6d0a-4c1e-9a7e-3c1f5d2e8b90")
        assert (error["code"], code) == ("minion_not_found", 4404)

        control, minion, golem, minion_id = await pair()
        error, code = await refused(f"/golem/v1/connect-to/ws1/{minion_id}")
        assert (error["code"], code) == ("minion_paired", 4409)
        # A minion of another webstrate is not found here.
        error, code = await refused(f"/golem/v1/connect-to/other/{minion_id}")
        assert (error["code"], code) == ("minion_not_found", 4404)
        await golem.send_to(text_data="unaffected")
        assert await minion.receive_from(5) == "unaffected"
        for communicator in (golem, minion, control):
            await communicator.disconnect()

    run(scenario)


def test_a_silent_peer_counts_as_gone(settings):
    """A peer whose process died says nothing: three missed heartbeats end the pairing."""
    settings.HERDER_PAIRING_HEARTBEAT = 0.2

    async def scenario():
        control, minion, golem, minion_id = await pair()
        # Stop the minion's consumer without its goodbye, as a crash would.
        minion.future.cancel()
        assert await event(golem, timeout=5) == {"Event": "minion-disconnected", "ID": minion_id}
        assert await close_code(golem) in (None, 1000)
        assert await event(control, timeout=5) == {"Event": "minion-disconnected", "ID": minion_id}
        await control.disconnect()

    run(scenario)


def test_a_minion_may_not_pile_up_frames_before_pairing(settings):
    settings.HERDER_PAIRING_BUFFER = 5

    async def scenario():
        control = await connect("/golem/v1/connect/ws1")
        minion = await connect("/minion/v1/connect/ws1")
        for i in range(6):
            await minion.send_to(text_data=str(i))
        error = await event(minion)
        assert (error["type"], error["code"]) == ("error", "payload_too_large")
        assert await close_code(minion) == 4413
        await control.disconnect()

    run(scenario)


@pytest.mark.parametrize("layer", ["in-memory", "redis"])
def test_two_peers_streaming_at_each_other_do_not_wait_on_each_other(settings, layer):
    """Both sides send thousands of frames before reading any: more than the channels
    and the outboxes hold. Each socket keeps delivering while it waits for room."""
    if layer == "redis":
        redis_url = os.environ.get("HERDER_TEST_REDIS_URL")
        if not redis_url:
            pytest.fail("HERDER_TEST_REDIS_URL is not set (deploy/test.sh sets it).")
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "herder.channel_layer.HerderChannelLayer",
                "CONFIG": {"hosts": [{"address": redis_url, "socket_timeout": 30}]},
            }
        }
    count = 5000

    async def scenario():
        control, minion, golem, minion_id = await pair(f"both-ways-{layer}")
        for i in range(count):
            await minion.send_to(text_data=f"m{i}")
            await golem.send_to(bytes_data=i.to_bytes(2, "big"))
        assert [await golem.receive_from(30) for _ in range(count)] == [f"m{i}" for i in range(count)]
        assert [await minion.receive_from(30) for _ in range(count)] == [i.to_bytes(2, "big") for i in range(count)]
        for communicator in (golem, minion, control):
            await communicator.disconnect()

    run(scenario)


def test_a_control_socket_that_lost_its_claim_is_closed(settings):
    """A process stalled past three heartbeats has been taken over: its socket learns it."""
    settings.HERDER_PAIRING_HEARTBEAT = 0.2

    async def scenario():
        control = await connect("/golem/v1/connect/ws1")
        await asyncio.sleep(0.1)
        await database_sync_to_async(GolemPresence.objects.filter(webstrate="ws1").update)(
            channel="specific.other!socket"
        )
        error = await event(control)
        assert (error["type"], error["code"]) == ("error", "golem_connected")
        assert await close_code(control) == 4409

    run(scenario)
    assert GolemPresence.objects.get(webstrate="ws1").channel == "specific.other!socket"
