"""The ledger's size under metering, and how soon a daemon stops at zero.

1. Rows: 100 daemons (rows only, no containers) through a simulated day. The
   real metering (daemons.services.daemon_charge, the supervisor's) is called
   with a fake clock, a pass every --pass-seconds simulated seconds; prints the
   ledger rows written (target: at most 2,400, one per daemon per hour) beside
   what one row per pass would have written at the real 5 s interval.
2. Stop delay: --stops real daemon-echo containers (Docker), each on an account
   with 3 to 5 s of credit, under the real supervisor loop (a 5 s interval);
   prints, per daemon, the delay between the moment its balance reached zero
   (started + credits / cost, from the database) and its recorded stop.

Its own data folder (SQLite) and HERDER_INSTANCE, so it touches no other
herder's rows or containers; what it started is removed at the end.

    .venv/bin/python bench/ledger.py [--daemons 100] [--pass-seconds 300] [--stops 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def setup() -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["HERDER_DATA_DIR"] = tempfile.mkdtemp(prefix="herder-bench-ledger-")
    os.environ["HERDER_INSTANCE"] = f"herder-test-ledger-{secrets.token_hex(4)}"
    os.environ["HERDER_DAEMON_IMAGES"] = "herder/daemon-echo:latest"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "herder.settings")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def rows_in_a_day(daemons: int, pass_seconds: int) -> None:
    from accounts.models import CreditEntry
    from accounts.services import account_balance, account_get_or_create, account_ledger_sum, credits_grant
    from daemons.models import Daemon
    from daemons.services import daemon_charge

    start = datetime(2026, 1, 1, tzinfo=UTC)
    account = account_get_or_create(email="bench-ledger@herder.test")
    credits_grant(account=account, amount=10**12)
    rows = [
        Daemon.objects.create(
            owner=account,
            name=f"d{i}",
            full_name=f"d{i}-bench",
            image="herder/daemon-echo:latest",
            volume=f"herder-test-bench-{i}",
            state=Daemon.State.RUNNING,
            started=start,
            metered_until=start,
        )
        for i in range(daemons)
    ]
    before = CreditEntry.objects.count()
    began = time.monotonic()
    passes = 86400 // pass_seconds
    for step in range(1, passes + 1):
        now = start + timedelta(seconds=step * pass_seconds)
        for daemon in rows:
            daemon_charge(daemon, until=now)
    elapsed = time.monotonic() - began
    written = CreditEntry.objects.count() - before
    print(f"rows: {daemons} daemons, simulated day, a pass every {pass_seconds} s ({passes} passes, {elapsed:.1f} s)")
    print(f"  ledger rows written: {written} (target <= {24 * daemons}; one per pass at 5 s: {daemons * 17280})")
    print(f"  balance == ledger sum: {account_balance(account) == account_ledger_sum(account)}")
    # They have no containers: out of the way of the real supervisor below.
    Daemon.objects.filter(pk__in=[d.pk for d in rows]).update(state=Daemon.State.KILLED, stopped=now)


def stop_delays(count: int) -> None:
    from accounts.services import account_balance, token_authenticate, token_mint
    from daemons.models import Daemon
    from daemons.services import daemon_spawn, daemon_supervise
    from herder.runtime import get_runtime
    from herder.supervisor import Supervisor

    supervisor = Supervisor(interval=5.0, duties=[daemon_supervise])
    supervisor.start()
    spawned = []
    try:
        for i in range(count):
            token = token_mint(email=f"bench-stop-{i}@herder.test", credits=3 + i % 3)
            account, row = token_authenticate(token)
            spawned.append(
                daemon_spawn(
                    account=account,
                    jti=row.jti,
                    name=f"stop{i}",
                    image="herder/daemon-echo:latest",
                    ports=[8080],
                    files={},
                )
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Daemon.objects.filter(state="running").exists():
            time.sleep(0.2)
    finally:
        supervisor.stop()
        runtime = get_runtime()
        for info in runtime.list(kind="daemon", ours=True):
            runtime.remove(info.handle)
        for network in runtime.networks(kind="daemon", ours=True):
            runtime.network_remove(network.name)
        for daemon in Daemon.objects.all():
            runtime.remove_volume(daemon.volume)
    from django.conf import settings

    cost = settings.HERDER_DAEMON_COST_PER_SECOND
    delays = []
    print(f"stops: {count} daemon-echo containers, supervisor interval 5 s")
    for daemon in Daemon.objects.filter(pk__in=[d.pk for d in spawned]).select_related("owner").order_by("pk"):
        credits = daemon.owner.tokens.get().credits
        zero = daemon.started + timedelta(seconds=credits / cost)
        delay = (daemon.stopped - zero).total_seconds() if daemon.stopped else float("nan")
        delays.append(delay)
        print(
            f"  {daemon.name}: {credits} credits, state {daemon.state}, balance {account_balance(daemon.owner)}, "
            f"stopped {delay * 1000:.0f} ms after zero"
        )
    print(f"  worst stop delay: {max(delays) * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--daemons", type=int, default=100)
    parser.add_argument(
        "--pass-seconds", type=int, default=300, help="simulated seconds between passes (rows do not depend on it)"
    )
    parser.add_argument("--stops", type=int, default=3, help="real daemons for the stop delay; 0 skips it")
    args = parser.parse_args()
    setup()
    rows_in_a_day(args.daemons, args.pass_seconds)
    try:
        if args.stops:
            stop_delays(args.stops)
    finally:
        shutil.rmtree(os.environ["HERDER_DATA_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
