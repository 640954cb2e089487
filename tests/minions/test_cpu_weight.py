"""A client's runs beyond its first weigh least for the CPU while they run
(HERDER_MINION_CPU_WEIGHT_EXTRA), and a container serves the next client with
the engine's default weight again. Each program reads its own cgroup's weight."""

import asyncio

import pytest
from asgiref.sync import async_to_sync

from minions.services import minion_run_admitted, pool

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]

CLIENT = "addr:198.51.100.50"
READ_WEIGHT = "print(open('/sys/fs/cgroup/cpu/cpu.shares').read().strip())"
READ_WEIGHT_AND_STAY = READ_WEIGHT + "\nimport time\ntime.sleep(3)"


def weights_of_concurrent_runs(client: str) -> tuple[int, int, str]:
    async def scenario():
        first = asyncio.ensure_future(
            minion_run_admitted(client=client, env="python", files={"main.py": READ_WEIGHT_AND_STAY.encode()})
        )
        await asyncio.sleep(0.5)  # the first holds its slot and runs
        second = await minion_run_admitted(client=client, env="python", files={"main.py": READ_WEIGHT.encode()})
        return await first, second

    first, second = async_to_sync(scenario)()
    return int(first.outcome.stdout), int(second.outcome.stdout), second.run.container


def test_a_clients_second_run_weighs_least_and_its_container_is_restored(settings, docker_engine):
    settings.HERDER_MINION_POOL_SIZE = 2
    settings.HERDER_MINION_CPU_WEIGHT_EXTRA = 2
    first, second, container = weights_of_concurrent_runs(CLIENT)
    assert (first, second) == (1024, 2)

    # Given back for the next client at the default weight.
    idle = {warm.handle.id: warm for warm in list(pool._idle.get("python", ()))}
    assert container in {cid[:64] for cid in idle}
    for warm in idle.values():
        assert warm.cpu_weight is None
        code, out = docker_engine.exec(warm.handle, ["cat", "/sys/fs/cgroup/cpu/cpu.shares"])
        assert (code, out.strip()) == (0, b"1024")


def test_without_the_setting_every_run_weighs_the_same(settings):
    settings.HERDER_MINION_POOL_SIZE = 2
    settings.HERDER_MINION_CPU_WEIGHT_EXTRA = 0
    first, second, _ = weights_of_concurrent_runs("addr:198.51.100.51")
    assert (first, second) == (1024, 1024)
