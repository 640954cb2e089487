import time

import pytest

from herder.runtime import ContainerSpec
from herder.supervisor import Supervisor
from minions.services import minion_reap_orphans

pytestmark = [pytest.mark.docker, pytest.mark.django_db]


def test_orphaned_minion_containers_are_reaped(docker_engine, settings):
    settings.HERDER_MINION_TIMEOUT = 0.5
    settings.HERDER_MINION_REAP_GRACE = 0
    settings.HERDER_MINION_RUNS_PER_CONTAINER = 1
    orphan = docker_engine.start(
        ContainerSpec(
            kind="minion", owner="herder-test-orphan", image="herder/minion-python:latest", command=["sleep", "60"]
        )
    )

    time.sleep(4)  # older than time limit + backstop; the engine counts in whole seconds
    calls = []
    supervisor = Supervisor(interval=1, duties=[lambda: 1 / 0, minion_reap_orphans, lambda: calls.append(1)])
    supervisor.run_once()

    assert docker_engine.list(owner="herder-test-orphan") == []
    assert calls == [1], "a failing duty must not stop the others"
    docker_engine.remove(orphan)


def test_runs_in_progress_are_not_reaped(docker_engine, settings):
    settings.HERDER_MINION_REAP_GRACE = 0
    young = docker_engine.start(
        ContainerSpec(
            kind="minion", owner="herder-test-young", image="herder/minion-python:latest", command=["sleep", "60"]
        )
    )
    try:
        assert minion_reap_orphans() == 0
        assert len(docker_engine.list(owner="herder-test-young")) == 1
    finally:
        docker_engine.remove(young)


def test_this_processes_warm_containers_are_not_reaped(docker_engine, settings):
    from minions.services import pool

    settings.HERDER_MINION_POOL_SIZE = 1
    settings.HERDER_MINION_TIMEOUT = 0.5
    settings.HERDER_MINION_REAP_GRACE = 0
    settings.HERDER_MINION_RUNS_PER_CONTAINER = 1
    pool.take("python")
    pool.drain()
    pool.fill("python")
    # The pool's own filler may have started one more meanwhile: all of them are ours.
    warm_ids = set(pool.container_ids())
    assert warm_ids

    time.sleep(4)
    minion_reap_orphans()

    assert warm_ids <= {info.handle.id for info in docker_engine.list(kind="minion")}
    pool.close()


def test_a_quiet_deployment_waits_the_whole_interval(settings):
    """Every configured duty, on a deployment with nothing to do: the next pass
    is an interval away. (A reaping duty's count of 0 once read as "again in
    0 s" and the supervisor passed 20 times a second.)"""
    settings.HERDER_MINION_REAP_GRACE = 3600
    supervisor = Supervisor.from_settings()
    supervisor.lease = None  # this test's process leads: every duty runs
    assert supervisor.run_once() == settings.HERDER_SUPERVISOR_INTERVAL


def test_a_duty_asks_for_a_sooner_pass_only_by_next_pass():
    from herder.supervisor import NextPass

    counts = Supervisor(interval=5, duties=[lambda: 0, lambda: 3, lambda: None])
    assert counts.run_once() == 5
    sooner = Supervisor(interval=5, duties=[lambda: 0, lambda: NextPass(1.5)])
    assert sooner.run_once() == pytest.approx(1.55)
