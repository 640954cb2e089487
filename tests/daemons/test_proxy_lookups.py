"""Where the proxy finds a daemon: its cache of targets, without a database
query per request, nor one per request in flight when an entry expires."""

import asyncio

import pytest
from asgiref.sync import async_to_sync

from accounts.services import token_authenticate, token_mint
from daemons import proxy
from daemons.models import Daemon

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def running_daemon():
    account, _ = token_authenticate(token_mint(email="lookups@herder.test", credits=100))
    return Daemon.objects.create(
        owner=account,
        name="web",
        full_name="web-lookups",
        host_label="web-0123456789abcdef",
        image="herder/daemon-echo:latest",
        ports=[8080],
        host_ports={"8080": 41234},
        state=Daemon.State.RUNNING,
        container_id="c" * 64,
        volume="herder-test-lookups",
    )


@pytest.fixture
def counted_lookups(monkeypatch):
    """The real lookup, counted."""
    calls = []
    real = proxy._lookup_target

    async def lookup(route):
        calls.append(route.key)
        await asyncio.sleep(0.05)  # a query slow enough for every request to miss meanwhile
        return await real(route)

    monkeypatch.setattr(proxy, "_lookup_target", lookup)
    proxy._targets.clear()
    yield calls
    proxy._targets.clear()


def test_requests_missing_at_once_share_one_lookup(running_daemon, counted_lookups):
    route = proxy.Route(key="web-lookups", on_origin=False, path="/")

    async def burst():
        return await asyncio.gather(*(proxy.daemon_target(route) for _ in range(20)))

    targets = async_to_sync(burst)()
    assert counted_lookups == ["web-lookups"]
    assert set(targets) == {proxy.Target("127.0.0.1", 41234, running_daemon.pk)}
    # Cached now: no lookup; once forgotten (a kill, a spawn): looked up again.
    async_to_sync(proxy.daemon_target)(route)
    assert len(counted_lookups) == 1
    proxy.forget_target(running_daemon)
    async_to_sync(proxy.daemon_target)(route)
    assert len(counted_lookups) == 2


def test_a_waiter_that_leaves_does_not_cancel_the_others_lookup(running_daemon, counted_lookups):
    route = proxy.Route(key="web-lookups", on_origin=False, path="/")

    async def one_leaves():
        first = asyncio.ensure_future(proxy.daemon_target(route))
        second = asyncio.ensure_future(proxy.daemon_target(route))
        await asyncio.sleep(0.01)
        first.cancel()
        return await second

    assert async_to_sync(one_leaves)() == proxy.Target("127.0.0.1", 41234, running_daemon.pk)
    assert counted_lookups == ["web-lookups"]


def test_a_daemon_that_is_not_running_is_not_found_and_not_cached(running_daemon, counted_lookups):
    Daemon.objects.filter(pk=running_daemon.pk).update(state=Daemon.State.KILLED)
    route = proxy.Route(key="web-lookups", on_origin=False, path="/")
    assert async_to_sync(proxy.daemon_target)(route) is None
    assert async_to_sync(proxy.daemon_target)(route) is None
    assert len(counted_lookups) == 2
