"""What happened, told once: a structured log line and the metrics that count it.

Minion runs and credit spends are recorded as rows on every path (a failed
attempt too), so they are told from the rows' post_save (connected in
herder/apps.py): nothing in the apps has to remember to call them. Golem and
daemon starts and stops: daemons are saved as their state changes, so they are
told from the Daemon rows' post_save too; golems change by conditional
updates (no signal), so golems/services.py calls the hooks, one line each:

    events.golem_started(golem)            once its container runs
    events.golem_stopped(webstrate, state, error)
    events.golem_proven(golem)             its Chromium connected with its proof: ready
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from django.db import transaction
from django.utils import timezone

from herder import metrics
from herder.logs import log_event

logger = logging.getLogger("herder.events")


def minion_run_saved(sender, instance, created: bool, **kwargs) -> None:
    """post_save of minions.MinionRun: one line and the run's metrics, once,
    when the run ends (its row is written at its start too, state running)."""
    if instance.state == instance.State.RUNNING:
        return
    run = instance
    outcome = metrics.run_outcome(error=run.error, timed_out=run.timed_out, exit_code=run.exit_code)
    metrics.minion_run_duration.labels(run.env, outcome).observe(run.duration_ms / 1000)
    metrics.minion_runs.labels(run.env, outcome).inc()
    log_event(
        logger,
        "minion.run",
        level=logging.WARNING if outcome == "error" else logging.INFO,
        env=run.env,
        outcome=outcome,
        exit_code=run.exit_code,
        duration_ms=run.duration_ms,
        warm=run.warm,
        container=run.container[:12],
        webstrate=run.webstrate or None,
        error=run.error or None,
    )


def credit_entry_saved(sender, instance, created: bool, **kwargs) -> None:
    """post_save of accounts.CreditEntry: spends count once their transaction commits."""
    if created and instance.amount < 0 and instance.kind == "spend":
        spent = -instance.amount
        transaction.on_commit(lambda: metrics.credits_spent.inc(spent))


def golem_started(golem) -> None:
    log_event(logger, "golem.start", webstrate=golem.webstrate, container=golem.container_name, restarts=golem.restarts)


def golem_stopped(webstrate: str, state: str, error: str = "") -> None:
    """A golem killed, reaped or crashed (`state`)."""
    log_event(
        logger,
        "golem.stop",
        level=logging.WARNING if state == "crashed" else logging.INFO,
        webstrate=webstrate,
        state=state,
        error=error or None,
    )


# Generations already timed: a golem's page reconnecting (a reload) is not a new start.
_timed: OrderedDict[str, None] = OrderedDict()
_timed_lock = threading.Lock()


def golem_proven(golem) -> None:
    """A golem's Chromium connected its control socket with its proof: the
    golem is ready. Times its start once per container (generation)."""
    if not golem.generation or golem.started is None:
        return
    with _timed_lock:
        if golem.generation in _timed:
            return
        _timed[golem.generation] = None
        while len(_timed) > 4096:
            _timed.popitem(last=False)
    seconds = max((timezone.now() - golem.started).total_seconds(), 0.0)
    metrics.golem_ready.observe(seconds)
    log_event(logger, "golem.ready", webstrate=golem.webstrate, seconds=round(seconds, 3))


_DAEMON_STOPPED = ("killed", "out_of_credits", "dead", "failed")


def daemon_saved(sender, instance, created: bool, update_fields=None, **kwargs) -> None:
    """post_save of daemons.Daemon: a line when it starts running or stops
    (once its transaction commits; saves that do not touch `state`, such as
    metering, say nothing)."""
    if update_fields is not None and "state" not in update_fields:
        return
    daemon = instance
    if daemon.state == "running" and daemon.container_id:
        fields = {"daemon": daemon.full_name, "image": daemon.image, "container": daemon.container_id[:12]}
        transaction.on_commit(lambda: log_event(logger, "daemon.start", **fields))
    elif daemon.state in _DAEMON_STOPPED:
        fields = {"daemon": daemon.full_name, "state": daemon.state}
        level = logging.WARNING if daemon.state in ("dead", "failed") else logging.INFO
        transaction.on_commit(lambda: log_event(logger, "daemon.stop", level=level, **fields))
