"""Controlled minions: run submitted code in a sandboxed container, once."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from herder.admission import Slots, Ticket
from herder.errors import RuntimeUnavailable, UnknownEnv
from herder.files import check_files, check_name
from herder.runtime import ContainerGone, ContainerSpec, Handle, get_runtime
from minions import runner
from minions.models import MinionRun
from minions.pool import Pool, Warm, start_warm

logger = logging.getLogger(__name__)

# Containers of runs in progress in this process, removed if the herder stops.
_live: set[Handle] = set()
_live_lock = threading.Lock()
# Set when the herder stops: every run in progress gives up at once.
_stopping = threading.Event()
# The engine's CPU weight for a container (Docker's cpu_shares default).
_ENGINE_CPU_WEIGHT = 1024


@dataclass
class MinionResult:
    run: MinionRun
    outcome: runner.Outcome
    # Where the run's time went, ms (the answer's Server-Timing): recording the
    # run, taking a container, the exchange with its runner.
    timings: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict:
        """The original's StdOut/StdErr keys, plus what the original did not say."""
        outcome = self.outcome
        return {
            "StdOut": outcome.stdout.decode("utf-8", "replace"),
            "StdErr": outcome.stderr.decode("utf-8", "replace"),
            "ExitCode": outcome.exit_code,
            "TimedOut": outcome.timed_out,
            "Truncated": outcome.truncated,
            "DurationMs": self.run.duration_ms,
        }


def minion_image(env: str) -> str:
    """The image of an env. Raises UnknownEnv naming the known ones."""
    images = settings.HERDER_MINION_IMAGES
    if env not in images:
        known = ", ".join(sorted(images))
        shown = f"Unknown env {env!r}" if env else "No env given"
        raise UnknownEnv(f"{shown}; the known envs are: {known}.")
    return images[env]


def minion_spec(*, env: str, image: str, owner: str) -> ContainerSpec:
    """The sandbox every minion runs in; each limit is a setting."""
    return ContainerSpec(
        kind="minion",
        owner=owner,
        image=image,
        command=["--serve"],
        labels={"herder.env": env},
        # herder-run starts as root with nothing but the capabilities to become
        # HERDER_MINION_USER, which every program runs as, and to kill what
        # its programs leave behind.
        user="0:0",
        cap_add=["SETUID", "SETGID", "KILL"],
        environment={"HERDER_RUN_AS": _uid() + ":" + _gid()},
        memory=settings.HERDER_MINION_MEMORY,
        cpus=settings.HERDER_MINION_CPUS,
        pids=settings.HERDER_MINION_PIDS,
        network="none",
        read_only=True,
        tmpfs={
            # Root's, not the user's: herder-run makes it sticky and open to
            # all like /tmp, so that a run cannot set extended attributes or a
            # mode on /minion itself, which emptying it would not undo.
            "/minion": f"rw,exec,nosuid,nodev,size={settings.HERDER_MINION_WORKDIR_SIZE},mode=1777",
            "/tmp": f"rw,exec,nosuid,nodev,size={settings.HERDER_MINION_TMP_SIZE},mode=1777",
        },
        confined=True,
        stdin=True,
        auto_remove=True,
        keep_logs=False,
    )


def _uid() -> str:
    return settings.HERDER_MINION_USER.split(":")[0]


def _gid() -> str:
    user = settings.HERDER_MINION_USER
    return user.split(":")[1] if ":" in user else user


def webstrate_of(url: str) -> str:
    """The webstrate a page URL names: the first segment of its path."""
    path = urlsplit(url).path.strip("/")
    return path.split("/", 1)[0][:128] if path else ""


def minion_check(*, env: str, files: dict[str, bytes], output: str | None = None) -> str:
    """Judge a run's input before anything else happens; its env's image.
    Raises UnknownEnv, BadFileName, PayloadTooLarge."""
    image = minion_image(env)
    check_files(files)
    if output:
        check_name(output)
    return image


def minion_run(
    *,
    env: str,
    files: dict[str, bytes],
    output: str | None = None,
    client_addr: str = "",
    origin: str = "",
    cancelled: Callable[[], bool] = lambda: False,
    cpu_weight: int | None = None,
) -> MinionResult:
    """Run `files` in a sandboxed container of `env` (warm from the pool, else
    a fresh one) and collect the result. With `cpu_weight`, the container has
    that CPU weight while the run lasts (a client's runs beyond its first).

    `cancelled` is polled while the run waits: once true the run is abandoned
    (the client went away) and runner.Cancelled raised.
    Raises UnknownEnv, BadFileName, PayloadTooLarge (before Docker is touched),
    RuntimeUnavailable and ImageMissing. The container is gone when this returns
    or raises.
    """
    image = minion_check(env=env, files=files, output=output)
    webstrate = webstrate_of(origin)
    run = MinionRun(
        env=env,
        image=image,
        client_addr=client_addr[:64],
        origin=origin[:512],
        webstrate=webstrate,
        files_count=len(files),
        files_bytes=sum(len(data) for data in files.values()),
        output_name=output or "",
    )
    # Recorded from its start: the admin shows runs in progress.
    clock = time.perf_counter()
    run.save()
    timings = {"record": (time.perf_counter() - clock) * 1000}
    nonce = runner.new_nonce()
    request = runner.encode_request(
        nonce=nonce,
        output=output,
        timeout=settings.HERDER_MINION_TIMEOUT,
        file_cap=settings.HERDER_MINION_FILE_CAP,
        files=files,
    )
    runtime = get_runtime()
    started = time.monotonic()
    handle = attachment = None
    outcome = exchanged = None
    warm = None
    try:
        clock = time.perf_counter()
        warm = pool.take(env)
        if warm is not None:
            handle, attachment = warm.handle, warm.attachment
            run.warm = True
        else:
            spec = minion_spec(env=env, image=image, owner=webstrate or "anonymous")
            spec.name = f"herder-minion-{nonce[:16]}"
            warm = start_warm(spec, timeout=settings.HERDER_MINION_TIMEOUT)
            handle, attachment = warm.handle, warm.attachment
        with _live_lock:
            _live.add(handle)
        run.container = handle.id[:64]
        if cpu_weight:
            runtime.set_cpu_weight(handle, cpu_weight)
            warm.cpu_weight = cpu_weight
        timings["take"] = (time.perf_counter() - clock) * 1000
        clock = time.perf_counter()
        outcome = runner.exchange(
            attachment,
            request=request,
            nonce=nonce,
            deadline=started + settings.HERDER_MINION_TIMEOUT,
            output_cap=settings.HERDER_MINION_OUTPUT_CAP,
            file_cap=settings.HERDER_MINION_FILE_CAP,
            cancelled=lambda: cancelled() or _stopping.is_set(),
        )
        exchanged = time.perf_counter()
        if not (outcome.finished or outcome.timed_out):
            # The program cannot end its runner: the engine or an operator did.
            raise RuntimeUnavailable("The minion's container ended before the run finished.")
    except BaseException as exc:
        run.error = f"{type(exc).__name__}: {exc}"[:255]
        raise
    finally:
        run.duration_ms = int((time.monotonic() - started) * 1000)
        if handle is not None:
            with _live_lock:
                _live.discard(handle)
            if outcome is not None and outcome.finished:
                # The runner resets the container: it serves again, or
                # retires and removes itself.
                warm.runs += 1
                warm.seen = outcome.after
                if (
                    warm.runs < settings.HERDER_MINION_RUNS_PER_CONTAINER
                    and not _stopping.is_set()
                    and _default_cpu_weight(runtime, warm)
                ):
                    pool.give_back(env, warm)
                else:
                    warm.retire()
            else:
                attachment.close()
                runtime.remove(handle)
        if outcome is not None:
            run.exit_code = outcome.exit_code
            run.timed_out = outcome.timed_out
            run.truncated = outcome.truncated
            run.stdout_bytes = len(outcome.stdout)
            run.stderr_bytes = len(outcome.stderr)
            run.output_bytes = len(outcome.output) if outcome.output is not None else None
            run.stderr_tail = stderr_tail(outcome)
        if "take" in timings:
            # Until the runner answered (or failed): giving the container back is not the exchange.
            timings["exchange"] = ((exchanged or time.perf_counter()) - clock) * 1000
        run.state = MinionRun.State.FINISHED if outcome is not None and not run.error else MinionRun.State.FAILED
        run.finished = timezone.now()
        clock = time.perf_counter()
        run.save()
        timings["record"] += (time.perf_counter() - clock) * 1000
    return MinionResult(run=run, outcome=outcome, timings=timings)


def _default_cpu_weight(runtime, warm: Warm) -> bool:
    """Put a container's CPU weight back before it serves another client;
    False (retire it) when that failed."""
    if warm.cpu_weight is None:
        return True
    try:
        runtime.set_cpu_weight(warm.handle, _ENGINE_CPU_WEIGHT)
    except (RuntimeUnavailable, ContainerGone):
        return False
    warm.cpu_weight = None
    return True


def stderr_tail(outcome: runner.Outcome) -> str:
    """What the admin keeps of a run's stderr: the end (where a traceback says
    why) of a failed or timed-out run's, HERDER_MINION_KEEP_STDERR bytes."""
    keep = settings.HERDER_MINION_KEEP_STDERR
    if keep <= 0 or not outcome.stderr or (outcome.exit_code == 0 and not outcome.timed_out):
        return ""
    # NUL bytes cannot be stored in every database's text column.
    return outcome.stderr[-keep:].decode("utf-8", "replace").replace("\x00", "\ufffd")


pool = Pool(lambda env: minion_spec(env=env, image=minion_image(env), owner="pool"))

# Runs in progress in this process: per client, in total, and a bounded queue.
minion_slots = Slots(
    "minion",
    per_client="HERDER_MINION_MAX_PER_CLIENT",
    per_account="HERDER_MINION_MAX_PER_ACCOUNT",
    total="HERDER_MINION_MAX_RUNNING",
    queue="HERDER_MINION_QUEUE",
    queue_wait="HERDER_MINION_QUEUE_WAIT",
)


async def minion_run_admitted(
    *,
    client: str,
    env: str,
    files: dict[str, bytes],
    output: str | None = None,
    client_addr: str = "",
    origin: str = "",
    ticket: Ticket | None = None,
) -> MinionResult:
    """minion_run for one client (herder.admission.client_of), once a slot is
    free: bad input is refused first, then the run waits in the queue (no
    thread while it waits), then runs in a thread of its own. With a
    `ticket` (a slot already waited for, by herder/gate.py) it does not wait.

    Cancelled (the client went away), a waiting run leaves the queue and a
    running one is abandoned at once (its container removed); its slot is
    given back only when its thread has ended, so the slots always count
    the containers really in use.
    Raises what minion_check and minion_run raise, and TooManyRequests.
    """
    minion_check(env=env, files=files, output=output)
    ticket = ticket.take() if ticket is not None else await minion_slots.ticket(client)
    extra = minion_slots.held_by(client) > 1
    gone = threading.Event()
    started = time.monotonic()
    run = asyncio.ensure_future(
        sync_to_async(minion_run)(
            env=env,
            files=files,
            output=output,
            client_addr=client_addr,
            origin=origin,
            cancelled=gone.is_set,
            cpu_weight=settings.HERDER_MINION_CPU_WEIGHT_EXTRA if extra else None,
        )
    )

    def ended(task: asyncio.Future) -> None:
        ticket.release(held=time.monotonic() - started)
        if not task.cancelled():
            task.exception()  # retrieved: nobody may be left to await it

    run.add_done_callback(ended)
    try:
        result = await asyncio.shield(run)
    except asyncio.CancelledError:
        gone.set()
        raise
    # What the run's thread did not account for: the hops to it and back.
    result.timings["hops"] = max(0.0, (time.monotonic() - started) * 1000 - sum(result.timings.values()))
    return result


def minion_pressure() -> dict:
    """For GET /pressure: runs in progress and waiting in this process, and their limits."""
    slots = minion_slots.snapshot()
    return {
        "running": slots["in_use"],
        "queued": slots["waiting"],
        "max_running": slots["limit"],
        "max_per_client": slots["per_client"],
        "max_per_account": slots["per_account"],
        "queue": slots["queue"],
        "queue_wait": slots["queue_wait"],
        "clients": slots["clients"],
        "warm": {env: pool.idle(env) for env in settings.HERDER_MINION_IMAGES if pool.idle(env)},
    }


def minion_abort_all() -> int:
    """The herder is stopping: end this process's runs in progress and remove
    their containers. Returns how many there were."""
    _stopping.set()
    pool.close()
    with _live_lock:
        handles = list(_live)
    runtime = get_runtime()
    for handle in handles:
        runtime.remove(handle)
    return len(handles)


def minion_reap_orphans() -> int:
    """Remove minion containers that have outlived any normal use: those of a
    herder process that died badly. This process's own are never touched;
    another process's idle warm container past that age is replaced by its pool.

    A container may serve HERDER_MINION_RUNS_PER_CONTAINER runs of at most the
    time limit each; an orphan ends itself sooner (EOF on its stdin), so this
    is the backstop for runners that could not.
    """
    runs = settings.HERDER_MINION_RUNS_PER_CONTAINER
    limit = timedelta(
        seconds=runs * (settings.HERDER_MINION_TIMEOUT + runner.BACKSTOP_SECONDS) + settings.HERDER_MINION_REAP_GRACE
    )
    with _live_lock:
        known = {handle.id for handle in _live}
    known |= pool.container_ids()
    runtime = get_runtime()
    reaped = 0
    for info in runtime.list(kind="minion", ours=True):
        if info.handle.id not in known and timezone.now() - info.created > limit:
            runtime.remove(info.handle)
            reaped += 1
    if reaped:
        logger.info("removed %d orphaned minion containers", reaped)
    # Rows of runs whose herder process died before recording their end.
    MinionRun.objects.filter(state=MinionRun.State.RUNNING, created__lt=timezone.now() - limit).update(
        state=MinionRun.State.FAILED, error="The herder process stopped during the run."
    )
    return reaped
