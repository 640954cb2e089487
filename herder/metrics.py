"""Every Prometheus family of the herder, defined once, with its labels.

Code elsewhere only calls the hooks below (or `.inc()`s a family); GET /metrics
(herder/scrape.py) renders them. Names follow JupyterHub's style: `herder_`,
the thing, the unit, `_total` for counters.

One process or several: prometheus_client reads PROMETHEUS_MULTIPROC_DIR
itself when it is imported. Unset, samples live in this process and the
default registry is scraped. Set (by `herd --workers N`), every process
writes its samples to files there and a scrape sums the files of every
process (`registry()`); gauges then say how they combine (`livesum`: only
live processes, summed). The folder must be emptied before the workers start
(`multiprocess_reset()`), and a worker that died should be told with
`process_dead(pid)`.

Gauges that mirror the database (golems, daemons by state) are computed when
scraped, one aggregate query each (`DatabaseCollector`); gauges of this
process's own state (idle warm containers) are refreshed by `refresh_local()`,
called at every scrape and every few seconds by each process's event loop.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path

from django.conf import settings
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

_MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# --- Minions -------------------------------------------------------------------

# How a run ended. refused: turned away at admission (never ran, so counted in
# runs_total only, with env "unknown": the door refuses before the env is read).
RUN_OUTCOMES = ("ok", "timeout", "oom", "error", "cancelled")
REFUSED_ENV = "unknown"

minion_run_duration = Histogram(
    "herder_minion_run_duration_seconds",
    "Controlled-minion runs from the start of the attempt to its result, by env and outcome.",
    ["env", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf")),
)
minion_runs = Counter(
    "herder_minion_runs",
    "Controlled-minion runs by env and outcome (ok, timeout, oom, error, cancelled, refused).",
    ["env", "outcome"],
)
minion_pool_idle = Gauge(
    "herder_minion_pool_idle",
    "Warm minion containers waiting for a run, by env.",
    ["env"],
    multiprocess_mode="livesum",
)

# --- Golems, daemons, credits ----------------------------------------------------

golem_ready = Histogram(
    "herder_golem_ready_seconds",
    "From a golem's start being claimed to its Chromium connecting its control socket with its proof.",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, float("inf")),
)
credits_spent = Counter("herder_credits_spent", "Credits spent by accounts (daemon running time).")

# --- WebSockets and the relay ------------------------------------------------------

WEBSOCKET_KINDS = ("golem_control", "golem_minion", "minion", "daemon_attach", "daemon_proxy", "other")
websockets = Gauge(
    "herder_websockets",
    "WebSockets open, by kind.",
    ["kind"],
    multiprocess_mode="livesum",
)
relay_messages = Counter(
    "herder_relay_messages",
    "Frames relayed between paired golem and minion sockets (delivered to a client).",
)
websockets_handed_over = Counter(
    "herder_websockets_handed_over",
    "Golem sockets to an ad-hoc minion passed, before their handshake, to the process holding the minion.",
)

# --- HTTP, the proxy, the event loop, the engine, refusals ---------------------------

proxy_request_duration = Histogram(
    "herder_proxy_request_duration_seconds",
    "Requests through the daemon proxy, until the last byte of the answer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, float("inf")),
)
http_requests = Counter(
    "herder_http_requests",
    "HTTP requests answered, by route (the URL pattern's name) and status code.",
    ["route", "code"],
)
event_loop_lag = Gauge(
    "herder_event_loop_lag_seconds",
    "How late the event loop ran a timer at its last sample (the worst process).",
    multiprocess_mode="livemax",
)
ENGINE_ERRORS = ("unreachable", "server_error")
engine_errors = Counter(
    "herder_engine_errors",
    "Container engine calls that failed: unreachable or a 5xx answer.",
    ["reason"],
)
# Reasons known when this was written, created up front; others appear on
# their first refusal (reasons are names in the code, never client input).
REFUSAL_REASONS = (
    "golem_total",
    "golem-spawn",
    "websocket_total",
    "websocket_per_client",
    "minion_total",
    "minion_per_client",
    "minion_queue_full",
    "minion_queue_timeout",
    "upload_total",
    "upload_per_client",
    "payload_too_large",
    "token_generate",
    "admin_login",
    "admin_login_user",
)
refused = Counter("herder_refused", "Requests refused for load (429) or over a body cap (413), by reason.", ["reason"])


def _create_series() -> None:
    """Every label value known up front, so series exist (at 0) before their first event."""
    for env in settings.HERDER_MINION_IMAGES:
        minion_pool_idle.labels(env)
        for outcome in RUN_OUTCOMES:
            minion_run_duration.labels(env, outcome)
            minion_runs.labels(env, outcome)
    minion_runs.labels(REFUSED_ENV, "refused")
    for kind in WEBSOCKET_KINDS:
        websockets.labels(kind)
    for reason in ENGINE_ERRORS:
        engine_errors.labels(reason)
    for reason in REFUSAL_REASONS:
        refused.labels(reason)


_create_series()


# --- Hooks: what other code calls ---------------------------------------------------


def count_refusal(reason: str) -> None:
    """herder.admission.note_refusal() (refuse() and the body caps) calls this for every refusal."""
    refused.labels(reason).inc()
    if reason.startswith("minion"):
        minion_runs.labels(REFUSED_ENV, "refused").inc()


def count_engine_error(reason: str) -> None:
    """herder.runtime calls this when the engine is unreachable or answers 5xx."""
    engine_errors.labels(reason).inc()


# Frames relayed but not yet added to relay_messages: a Counter's inc() costs
# about a microsecond (a lock), 5% of a relayed frame's CPU on uvicorn; an int
# costs nothing. Both functions run only on the event loop's thread (the
# consumers', and flush_relayed is called by the ASGI layer at every request
# and by the lag probe's callback every second), so no lock is needed.
_relayed = 0


def count_relayed() -> None:
    """A pairing socket delivered a frame of its peer to its client."""
    global _relayed
    _relayed += 1


def flush_relayed() -> None:
    """Add the frames counted since the last flush (on the event loop's thread)."""
    global _relayed
    count, _relayed = _relayed, 0
    if count:
        relay_messages.inc(count)


def run_outcome(*, error: str, timed_out: bool, exit_code: int | None) -> str:
    """A recorded run's outcome. A run killed for memory exits 137 (SIGKILL by the cgroup)."""
    if error:
        return "cancelled" if error.startswith("Cancelled") else "error"
    if timed_out:
        return "timeout"
    if exit_code == 137:
        return "oom"
    return "ok"


# --- Collected at scrape time ------------------------------------------------------------


class DatabaseCollector:
    """Golems and daemons by state: one GROUP BY each, at every scrape. Every
    state of the model is answered, 0 included."""

    _families = (
        ("herder_golems", "Golems by state (the database's rows).", "golems", "Golem"),
        ("herder_daemons", "Daemons by state (the database's rows).", "daemons", "Daemon"),
    )

    def describe(self):
        # Registering must not query the database (it would at import time).
        return [GaugeMetricFamily(name, text, labels=["state"]) for name, text, _, _ in self._families]

    def collect(self):
        from django.apps import apps
        from django.db.models import Count

        for name, text, app, model_name in self._families:
            model = apps.get_model(app, model_name)
            try:
                counts = dict(model.objects.order_by().values_list("state").annotate(n=Count("pk")))
            except Exception as exc:  # the database is down: no sample rather than a failed scrape
                logger.warning("metrics: could not count %s: %s", name, exc)
                continue
            family = GaugeMetricFamily(name, text, labels=["state"])
            states = [value for value, _ in model.State.choices]
            for state in states + sorted(set(counts) - set(states)):
                family.add_metric([state], counts.get(state, 0))
            yield family


_database_collector = DatabaseCollector()
if not _MULTIPROC:
    REGISTRY.register(_database_collector)

_refresh_lock = threading.Lock()


def refresh_local() -> None:
    """Set the gauges of this process's own state (warm containers by env)."""
    from minions.services import pool  # herder/ reads the minion pool, which cannot tell us

    with _refresh_lock:
        for env in settings.HERDER_MINION_IMAGES:
            minion_pool_idle.labels(env).set(pool.idle(env))


def registry() -> CollectorRegistry:
    """What a scrape renders: this process's registry, or in multiprocess mode
    a fresh one summing every process's files, plus the database's gauges."""
    if not _MULTIPROC:
        return REGISTRY
    from prometheus_client import multiprocess

    scraped = CollectorRegistry()
    multiprocess.MultiProcessCollector(scraped)
    scraped.register(_database_collector)
    return scraped


# --- Multiprocess housekeeping (for `herd --workers N`) ------------------------------------


def multiprocess_reset(path: str | None = None) -> None:
    """Empty the multiprocess folder: call in the parent before starting workers
    (samples of earlier runs would otherwise be summed in)."""
    folder = Path(path or os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
    if not str(folder):
        return
    folder.mkdir(parents=True, exist_ok=True)
    for entry in folder.iterdir():
        if entry.suffix == ".db":
            entry.unlink(missing_ok=True)
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


def process_dead(pid: int, path: str | None = None) -> None:
    """A worker ended: its live gauges stop counting (its counters still count)."""
    folder = path or os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if folder:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, folder)
