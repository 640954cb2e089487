"""The operators' dashboard (/admin/dashboard/): what the herder did over the
last hour and the last two weeks, drawn from the rows it already keeps.

Runs come from MinionRun (recorded from their start), credits from the
ledger, golems and daemons running at each minute from their rows' start and
stop times (a golem's row keeps only its latest start: a restarted golem
counts from then), refusals from this process's memory (herder.admission).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from datetime import datetime, timedelta

from django.contrib import admin
from django.db.models import F, Q, Sum
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from accounts.models import CreditEntry
from daemons.models import Daemon
from golems.models import Golem
from herder import charts
from herder.admission import refusals_since
from minions.models import MinionRun

MINUTES = 60
DAYS = 14
# Accounts drawn separately in the credits chart; the rest are summed as "others".
TOP_ACCOUNTS = 7


def _minutes(now: datetime) -> list[datetime]:
    end = now.replace(second=0, microsecond=0)
    return [end - timedelta(minutes=MINUTES - 1 - i) for i in range(MINUTES)]


def _index(minutes: list[datetime], when: datetime) -> int | None:
    i = int((when - minutes[0]).total_seconds() // 60)
    return i if 0 <= i < len(minutes) else None


def outcome(run: dict) -> str:
    if run["state"] == MinionRun.State.RUNNING:
        return "running"
    if run["state"] == MinionRun.State.FAILED:
        return "failed"
    if run["timed_out"]:
        return "timed out"
    return "exit 0" if run["exit_code"] == 0 else "exit ≠ 0"


def runs_per_minute(minutes: list[datetime]) -> tuple[dict, dict]:
    """Runs started each minute by "env: outcome", and latency p50/p95 (ms)
    of the runs that ended, per minute."""
    counts: dict[str, list[float]] = defaultdict(lambda: [0] * len(minutes))
    durations: list[list[int]] = [[] for _ in minutes]
    rows = MinionRun.objects.filter(created__gte=minutes[0]).values(
        "created", "env", "state", "exit_code", "timed_out", "duration_ms"
    )
    for run in rows.iterator():
        i = _index(minutes, run["created"])
        if i is None:
            continue
        counts[f"{run['env']}: {outcome(run)}"][i] += 1
        if run["state"] == MinionRun.State.FINISHED:
            durations[i].append(run["duration_ms"])
    latency = {"p50": [_percentile(d, 50) for d in durations], "p95": [_percentile(d, 95) for d in durations]}
    return dict(counts), latency


def _percentile(values: list[int], p: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def running_over_time(minutes: list[datetime]) -> dict[str, list[float]]:
    """Golems and daemons whose run covered the end of each minute."""
    series = {}
    for label, model, states in (("golems", Golem, [Golem.State.RUNNING]), ("daemons", Daemon, [Daemon.State.RUNNING])):
        # A row restarted after a stop keeps its old `stopped`, earlier than `started`.
        spans = (
            model.objects.filter(started__isnull=False)
            .filter(
                Q(stopped__isnull=True, state__in=states) | Q(stopped__gte=minutes[0]) | Q(stopped__lt=F("started"))
            )
            .values_list("started", "stopped", "state")
        )
        ends = [m + timedelta(minutes=1) for m in minutes]
        counts = [0] * len(minutes)
        for started, stopped, state in spans:
            if stopped is not None and stopped < started:
                stopped = None if state in states else started  # restarted since its last stop
            for i, end in enumerate(ends):
                if started <= end and (stopped is None or stopped > end):
                    counts[i] += 1
        series[label] = counts
    return series


def refusals_per_minute(minutes: list[datetime]) -> dict[str, list[float]]:
    series: dict[str, list[float]] = defaultdict(lambda: [0] * len(minutes))
    for at, reason in refusals_since(MINUTES * 60):
        i = _index(minutes, datetime.fromtimestamp(at, tz=timezone.get_current_timezone()))
        if i is not None:
            series[reason][i] += 1
    return dict(series)


def credits_per_day(now: datetime) -> tuple[list[str], dict[str, list[float]]]:
    """Credits spent each day of the last DAYS by account (the top spenders by name)."""
    first = (now - timedelta(days=DAYS - 1)).date()
    days = [first + timedelta(days=i) for i in range(DAYS)]
    rows = (
        CreditEntry.objects.filter(kind=CreditEntry.Kind.SPEND, created__date__gte=first)
        .annotate(day=TruncDate("created"))
        .values("account__email", "day")
        .annotate(spent=Sum("amount"))
    )
    per: dict[str, list[float]] = defaultdict(lambda: [0] * DAYS)
    for row in rows:
        i = (row["day"] - first).days
        if 0 <= i < DAYS:
            per[row["account__email"]][i] += -row["spent"]
    top = sorted(per, key=lambda email: -sum(per[email]))[:TOP_ACCOUNTS]
    series = {email: per[email] for email in top}
    rest = [sum(per[e][i] for e in per if e not in top) for i in range(DAYS)]
    if any(rest):
        series["others"] = rest
    return [d.strftime("%m-%d") for d in days], series


def charts_now(now: datetime | None = None) -> list[tuple[str, str]]:
    """(title, SVG or an empty note) for each chart, in the page's order."""
    now = timezone.localtime(now or timezone.now())
    minutes = _minutes(now)
    labels = [m.strftime("%H:%M") for m in minutes]
    runs, latency = runs_per_minute(minutes)
    days, spent = credits_per_day(now)
    refusals = refusals_per_minute(minutes)
    drawn = [
        ("Minion runs per minute, by env and outcome", runs and charts.bars("runs", labels, runs)),
        (
            "Minion run latency (ms), p50 and p95 of finished runs",
            any(v is not None for v in latency["p50"]) and charts.lines("latency", labels, latency, unit=" ms"),
        ),
        ("Golems and daemons running", charts.lines("running", labels, running_over_time(minutes))),
        (f"Credits spent per account per day (last {DAYS} days)", spent and charts.bars("credits", days, spent)),
        ("Refusals per minute (429 and 413) in this process", refusals and charts.bars("refusals", labels, refusals)),
    ]
    return [(title, svg or charts.empty(title)) for title, svg in drawn]


def summary() -> dict:
    """What the admin's index shows above the apps: counts of what runs now."""
    hour = timezone.now() - timedelta(hours=1)
    return {
        "runs_running": MinionRun.objects.filter(state=MinionRun.State.RUNNING).count(),
        "runs_hour": MinionRun.objects.filter(created__gte=hour).count(),
        "runs_failed_hour": MinionRun.objects.filter(created__gte=hour)
        .filter(Q(state=MinionRun.State.FAILED) | Q(timed_out=True) | ~Q(exit_code=0))
        .count(),
        "golems_running": Golem.objects.filter(state=Golem.State.RUNNING).count(),
        "daemons_running": Daemon.objects.filter(state=Daemon.State.RUNNING).count(),
        "refusals_minute": len(refusals_since(60)),
    }


def dashboard(request: HttpRequest) -> HttpResponse:
    """Staff only (wrapped in admin.site.admin_view by herder/urls.py)."""
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "charts": charts_now(),
        "summary": summary(),
        "now": timezone.localtime(),
    }
    return TemplateResponse(request, "admin/herder_dashboard.html", context)
