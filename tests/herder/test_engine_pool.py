"""Engine calls from async code go through a bounded pool, and every engine
call has a timeout (herder/runtime.py)."""

import asyncio
import threading
import time

import pytest

from herder import runtime
from herder.runtime import get_runtime, in_engine_pool


@pytest.fixture
def fresh_pool(settings):
    settings.HERDER_DOCKER_THREADS = 3
    runtime._engine_pool = None
    yield
    runtime._engine_pool = None


def test_callers_beyond_the_pool_wait_as_futures_not_threads(fresh_pool):
    running = 0
    most = 0
    lock = threading.Lock()

    def blocking_call(n: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return n

    async def scenario():
        threads_before = threading.active_count()
        calls = [asyncio.ensure_future(in_engine_pool(blocking_call, n)) for n in range(20)]
        await asyncio.sleep(0.02)
        threads_during = threading.active_count()
        return await asyncio.gather(*calls), threads_during - threads_before

    results, new_threads = asyncio.run(scenario())
    assert results == list(range(20))
    assert most == 3 and new_threads <= 3


@pytest.mark.docker
def test_a_real_engine_call_through_the_pool(fresh_pool, docker_engine):
    listed = asyncio.run(in_engine_pool(get_runtime().list, kind="minion", ours=True))
    assert isinstance(listed, list)


@pytest.mark.docker
def test_the_engine_client_has_the_configured_timeout(settings, docker_engine):
    settings.HERDER_DOCKER_TIMEOUT = 7
    assert get_runtime().client.api.timeout == 7
