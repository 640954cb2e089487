"""Metering writes one ledger row per daemon per hour, and a daemon stops when
its account's balance runs out, not at the supervisor's next pass."""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import IntegrityError, transaction
from django.db.models import Count

from accounts.models import CreditEntry
from accounts.services import account_balance, account_get_or_create, account_ledger_sum, credits_grant
from daemons.models import Daemon
from daemons.services import daemon_charge, daemon_supervise, daemons_exhausted, daemons_run_out
from herder.supervisor import Supervisor
from tests.daemons.conftest import Holder
from tests.daemons.test_daemons import spawn_ready, wait_until

T0 = datetime(2026, 1, 1, 10, 17, 3, tzinfo=UTC)


def running_row(account, name: str, at: datetime = T0) -> Daemon:
    """A daemon as the database has it; metering needs no container."""
    return Daemon.objects.create(
        owner=account,
        name=name,
        full_name=f"{name}-jti",
        image="herder/daemon-echo:latest",
        volume=f"herder-test-{name}",
        state=Daemon.State.RUNNING,
        started=at,
        metered_until=at,
    )


@pytest.mark.django_db
def test_one_row_per_daemon_per_hour_and_balance_equals_ledger_with_grants_interleaved(settings):
    settings.HERDER_DAEMON_COST_PER_SECOND = 2
    account = account_get_or_create(email="meter@herder.test")
    credits_grant(account=account, amount=10**9)
    daemons = [running_row(account, f"d{i}") for i in range(3)]

    # Three hours of passes every 37 s (not dividing an hour: charges straddle hours).
    passes = int(3 * 3600 / 37)
    for step in range(1, passes + 1):
        now = T0 + timedelta(seconds=37 * step)
        for daemon in daemons:
            daemon_charge(daemon, until=now)
        if step % 40 == 0:
            credits_grant(account=account, amount=step)
        assert account_balance(account) == account_ledger_sum(account)

    spends = CreditEntry.objects.filter(account=account, kind="spend")
    per_hour = spends.values("subject", "hour").annotate(n=Count("pk"))
    assert {row["n"] for row in per_hour} == {1}
    # 10:17 to 13:17: four hours touched, four rows per daemon.
    assert spends.count() == 4 * len(daemons)
    seconds = 37 * passes
    assert sum(-e.amount for e in spends) == len(daemons) * seconds * 2
    for daemon in daemons:
        daemon.refresh_from_db()
        assert daemon.credits_used == seconds * 2
        assert daemon.metered_until == T0 + timedelta(seconds=seconds)


@pytest.mark.django_db
def test_a_second_row_for_the_same_hour_cannot_be_written():
    account = account_get_or_create(email="twice@herder.test")
    credits_grant(account=account, amount=100)
    hour = T0.replace(minute=0, second=0)
    CreditEntry.objects.create(account=account, amount=-1, kind="spend", subject="x-jti", hour=hour)
    with pytest.raises(IntegrityError), transaction.atomic():
        CreditEntry.objects.create(account=account, amount=-1, kind="spend", subject="x-jti", hour=hour)
    # Rows outside metering (no hour) stay one per spend.
    CreditEntry.objects.create(account=account, amount=-1, kind="spend", subject="x-jti")
    CreditEntry.objects.create(account=account, amount=-1, kind="spend", subject="x-jti")


@pytest.mark.django_db
def test_run_out_is_computed_from_balance_daemons_and_marks(settings):
    settings.HERDER_DAEMON_COST_PER_SECOND = 1
    account = account_get_or_create(email="soon@herder.test")
    credits_grant(account=account, amount=10)
    running_row(account, "a")
    running_row(account, "b")
    # 10 credits, two daemons at 1/s, both metered up to T0: zero at T0 + 5 s.
    assert daemons_run_out(now=T0 + timedelta(seconds=2)) == pytest.approx(3.0)
    # A grant meanwhile pushes it back.
    credits_grant(account=account, amount=4)
    assert daemons_run_out(now=T0 + timedelta(seconds=2)) == pytest.approx(5.0)
    assert daemons_exhausted() == set()

    other = account_get_or_create(email="poor@herder.test")
    credits_grant(account=other, amount=1)
    running_row(other, "c")
    running_row(other, "d")
    # One credit cannot pay a second of two daemons.
    assert daemons_exhausted() == {other.pk}
    assert daemons_run_out(now=T0) == pytest.approx(0.5)


@pytest.mark.docker
@pytest.mark.django_db(transaction=True)
def test_a_daemon_stops_within_a_second_of_its_account_reaching_zero(daemon_cleanup, settings):
    settings.HERDER_DAEMON_COST_PER_SECOND = 1
    holder = Holder("zero@herder.test", 3)
    # The interval is far longer than the credits last: only the scheduled
    # run-out can stop it in time.
    supervisor = Supervisor(interval=30, duties=[daemon_supervise])
    supervisor.start()
    try:
        spawn_ready(holder, name="brief")
        assert wait_until(lambda: Daemon.objects.get().state == "out_of_credits", seconds=15, step=0.2)
    finally:
        supervisor.stop()

    daemon = Daemon.objects.get()
    zero = daemon.started + timedelta(seconds=3)  # 3 credits at 1 per second
    assert zero <= daemon.stopped < zero + timedelta(seconds=1), (daemon.stopped - zero).total_seconds()
    assert account_balance(holder.account) == 0 == account_ledger_sum(holder.account)
    assert CreditEntry.objects.filter(subject=daemon.full_name).count() <= 2  # an hour boundary may split it


@pytest.mark.django_db
def test_spends_of_one_hour_grow_one_row_and_a_new_hour_starts_another():
    from accounts.services import credits_spend

    account = account_get_or_create(email="grow@herder.test")
    credits_grant(account=account, amount=100)
    hour = T0.replace(minute=0, second=0)
    for _ in range(5):
        assert credits_spend(account=account, amount=7, subject="y-jti", hour=hour) == 7
    credits_spend(account=account, amount=10, subject="y-jti", hour=hour + timedelta(hours=1))
    # More than is left: what is left is taken, into the same row.
    assert credits_spend(account=account, amount=1000, subject="y-jti", hour=hour + timedelta(hours=1)) == 55

    rows = CreditEntry.objects.filter(account=account, kind="spend").order_by("hour")
    assert [(row.hour, row.amount) for row in rows] == [(hour, -35), (hour + timedelta(hours=1), -65)]
    assert account_balance(account) == 0 == account_ledger_sum(account)
    # Nothing left: nothing spent, no row grown.
    assert credits_spend(account=account, amount=5, subject="y-jti", hour=hour) == 0
    assert CreditEntry.objects.get(hour=hour).amount == -35
