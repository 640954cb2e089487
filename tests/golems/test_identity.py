"""The golem proves itself on its control socket: the proof check without a
browser (the e2e in real Chromium is in test_golem_e2e.py)."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from golems.models import Golem, GolemPresence
from golems.services import PROOF_COOKIE, golem_proof
from herder.asgi import application
from tests.golems.test_consumers import close_code, connect, event, run

pytestmark = pytest.mark.django_db(transaction=True)

GENERATION = "0123456789abcdef"


def golem_container(webstrate: str, generation: str = GENERATION) -> Golem:
    """A golem row with a container, as golem_spawn leaves it (no Docker needed here)."""
    return Golem.objects.create(
        webstrate=webstrate, state=Golem.State.RUNNING, container_id="c" * 64, generation=generation
    )


async def control(webstrate: str, proof: str | None = None) -> WebsocketCommunicator:
    headers = [(b"cookie", f"other=1; {PROOF_COOKIE}={proof}".encode())] if proof is not None else []
    communicator = WebsocketCommunicator(application, f"/golem/v1/connect/{webstrate}", headers=headers)
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def refused_with(communicator) -> tuple[str, int]:
    error = await event(communicator)
    return error["code"], await close_code(communicator)


def test_the_right_proof_opens_the_control_socket_of_a_golem_with_a_container():
    golem_container("id-right")

    async def scenario():
        golem = await control("id-right", golem_proof("id-right", GENERATION))
        minion = await connect("/minion/v1/connect/id-right?type=python")
        connected = await event(golem)
        assert connected["Event"] == "minion-connected"
        assert await database_sync_to_async(lambda: GolemPresence.objects.get(webstrate="id-right").proven)()
        for communicator in (minion, golem):
            await communicator.disconnect()

    run(scenario)


def test_a_wrong_or_missing_proof_is_refused_while_a_golem_container_exists():
    golem_container("id-wrong")

    async def scenario():
        for proof in (
            None,
            "",
            "0" * 64,
            golem_proof("id-wrong", "another-generation"),
            golem_proof("another-webstrate", GENERATION),
        ):
            socket = await control("id-wrong", proof)
            assert await refused_with(socket) == ("golem_proof_required", 4403), proof
        assert not await database_sync_to_async(GolemPresence.objects.exists)()

    run(scenario)


def test_without_a_golem_container_an_unproven_socket_works_unless_control_is_closed(settings):
    # A killed golem has no container any more: a browser-tab golem may connect.
    Golem.objects.create(webstrate="id-tab", state=Golem.State.KILLED, generation=GENERATION)

    async def scenario(expect_open: bool):
        socket = await control("id-tab")
        if expect_open:
            minion = await connect("/minion/v1/connect/id-tab?type=python")
            assert (await event(socket))["Event"] == "minion-connected"
            await minion.disconnect()
            await socket.disconnect()
        else:
            assert await refused_with(socket) == ("golem_proof_required", 4403)

    async def open_():
        await scenario(True)

    async def closed():
        await scenario(False)

    run(open_)
    settings.HERDER_GOLEM_CONTROL_OPEN = False
    run(closed)


def test_the_proven_golem_replaces_a_squatter_that_saw_no_minion(settings):
    async def scenario():
        # The squatter connects before the golem's container exists (as the
        # original allowed), then the golem is spawned.
        squatter = await control("id-squat")
        await database_sync_to_async(golem_container)("id-squat")
        # A minion arriving now is not announced to the squatter: it waits for the golem.
        minion = await connect("/minion/v1/connect/id-squat?type=python")
        assert await squatter.receive_nothing(0.3)

        golem = await control("id-squat", golem_proof("id-squat", GENERATION))
        assert await refused_with(squatter) == ("golem_connected", 4409)
        connected = await event(golem)
        assert connected["Event"] == "minion-connected" and connected["Type"] == "python"
        to_minion = await connect(f"/golem/v1/connect-to/id-squat/{connected['ID']}")
        assert await event(minion) == {"Event": "golem-connected"}
        await minion.send_to(text_data="hello")
        assert await to_minion.receive_from(5) == "hello"
        # A second squatter now is refused outright.
        late = await control("id-squat")
        assert await refused_with(late) == ("golem_proof_required", 4403)
        for communicator in (to_minion, minion, golem):
            await communicator.disconnect()

    run(scenario)


def test_a_squatter_loses_its_claim_at_the_next_beat_once_a_golem_container_exists(settings):
    settings.HERDER_PAIRING_HEARTBEAT = 0.2

    async def scenario():
        squatter = await control("id-beat")
        await database_sync_to_async(golem_container)("id-beat")
        assert await refused_with(squatter) == ("golem_connected", 4409)
        assert not await database_sync_to_async(GolemPresence.objects.exists)()

    run(scenario)


def test_two_unproven_sockets_still_get_409_and_two_proven_ones_the_newest_wins():
    golem_container("id-two")

    async def scenario():
        first = await control("id-open")
        second = await control("id-open")
        assert await refused_with(second) == ("golem_connected", 4409)
        await first.disconnect()

        proof = golem_proof("id-two", GENERATION)
        old = await control("id-two", proof)
        new = await control("id-two", proof)  # a reloaded page whose old socket lingers
        assert await refused_with(old) == ("golem_connected", 4409)
        minion = await connect("/minion/v1/connect/id-two?type=python")
        assert (await event(new))["Event"] == "minion-connected"
        for communicator in (minion, new):
            await communicator.disconnect()

    run(scenario)
