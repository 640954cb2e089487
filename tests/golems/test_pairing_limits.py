"""Pairing under hostile clients: buffers bounded in bytes, golems kept while a
minion is connected, and database calls that do not queue behind one thread."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from golems import pairing
from golems.models import Golem, GolemPresence
from herder.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)

MiB = 1024 * 1024


def run(scenario) -> None:
    async_to_sync(scenario)()


async def connect(path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path)
    connected, _ = await communicator.connect(timeout=5)
    assert connected, path
    return communicator


def test_an_unpaired_minion_sending_1_mib_frames_hits_the_byte_cap(settings):
    """256 frames of 1 MiB used to be kept (the buffer counted frames): now the
    minion is refused (4413) once its buffer would pass HERDER_PAIRING_BUFFER_BYTES."""
    settings.HERDER_PAIRING_BUFFER_BYTES = 4 * MiB
    settings.HERDER_PAIRING_BUFFER = 1000
    frame = b"x" * MiB
    pairing.buffered_peak(reset=True)

    async def scenario():
        minion = await connect("/minion/v1/connect/bytes-cap?type=python")
        for _ in range(16):
            await minion.send_to(bytes_data=frame)
        error = json.loads(await minion.receive_from(5))
        assert (error["type"], error["code"]) == ("error", "payload_too_large")
        close = await minion.receive_output(5)
        assert (close["type"], close["code"]) == ("websocket.close", 4413)
        # Four frames were kept, the fifth refused; the refused socket's are freed at once.
        assert pairing.buffered_bytes() == 0
        await minion.disconnect()

    run(scenario)
    assert pairing.buffered_peak() == 4 * MiB
    assert pairing.buffered_bytes() == 0


def test_a_paired_socket_holds_at_most_its_byte_cap_for_a_slow_peer(settings):
    """The relay's own queue: while the peer takes nothing, puts past the byte
    cap wait (the consumer stops reading its client); once it takes, all flows."""

    async def scenario():
        delivered: list[int] = []
        go = asyncio.Event()

        async def slow_peer(message: dict) -> None:
            await go.wait()
            delivered.append(len(message["bytes"]))

        pairing.local_sockets["test.slow-peer"] = slow_peer
        failed = []
        outbox = pairing.Outbox(get_channel_layer(), size=1000, max_bytes=3 * MiB, on_fail=lambda: failed.append(True))
        outbox.start("test.slow-peer")
        try:
            sender = asyncio.create_task(_put_all(outbox, 10))
            await asyncio.sleep(0.2)
            # One frame in the peer's hands and two queued: the fourth waits.
            assert outbox.bytes == 3 * MiB and not sender.done()
            assert pairing.buffered_bytes() == 3 * MiB
            go.set()
            await asyncio.wait_for(sender, 5)
            await outbox.close()
            assert delivered == [MiB] * 10 and outbox.bytes == 0 and not failed
        finally:
            pairing.local_sockets.pop("test.slow-peer", None)
            outbox.cancel()

    run(scenario)
    assert pairing.buffered_bytes() == 0


async def _put_all(outbox: pairing.Outbox, count: int) -> None:
    for _ in range(count):
        await outbox.put({"type": "relay.frame", "bytes": b"y" * MiB})


def test_a_connected_minion_keeps_its_golem_from_being_reaped(settings):
    settings.HERDER_GOLEM_IDLE_TIMEOUT = 0.4  # touched every 0.1 s
    long_ago = timezone.now() - timezone.timedelta(days=1)
    Golem.objects.create(webstrate="kept", state=Golem.State.RUNNING, last_active=long_ago)

    async def scenario():
        minion = await connect("/minion/v1/connect/kept")
        await asyncio.sleep(0.05)
        first = await database_sync_to_async(lambda: Golem.objects.get(webstrate="kept").last_active)()
        assert first > long_ago  # the minion's arrival counts
        await asyncio.sleep(0.5)
        later = await database_sync_to_async(lambda: Golem.objects.get(webstrate="kept").last_active)()
        assert later > first  # and so does its staying
        await minion.disconnect()

    run(scenario)


def test_pairing_database_calls_do_not_queue_behind_the_shared_thread():
    """Channels runs database_sync_to_async on one shared thread by default:
    while something holds it, a golem's control socket must still claim its
    presence (and minions find it)."""
    release = threading.Event()

    async def scenario():
        # Occupies the one thread every thread-sensitive call would wait for.
        blocker = asyncio.ensure_future(sync_to_async(release.wait, thread_sensitive=True)())
        try:
            control = await connect("/golem/v1/connect/unshared")
            for _ in range(100):
                claimed = await sync_to_async(
                    GolemPresence.objects.filter(webstrate="unshared").exists, thread_sensitive=False
                )()
                if claimed:
                    break
                await asyncio.sleep(0.05)
            assert claimed, "the presence claim waited for the shared thread"
            minion = await connect("/minion/v1/connect/unshared")
            connected = json.loads(await control.receive_from(5))
            assert connected["Event"] == "minion-connected"
            await minion.disconnect()
            await control.disconnect()
        finally:
            release.set()
            await blocker

    run(scenario)
