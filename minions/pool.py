"""Warm minion containers: created, attached and started ahead of time.

A warm container is exactly a cold one (same sandbox, same herder-run) whose
runner already waits for its request on stdin, so a run costs no Docker call
on its critical path. A background thread keeps HERDER_MINION_POOL_SIZE of them
per env ready. A container serves up to HERDER_MINION_RUNS_PER_CONTAINER runs,
the runner resetting it between them, then removes itself.

An idle container whose herder process died reads EOF on its stdin, exits
and removes itself.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from dataclasses import dataclass

from django.conf import settings

from herder.errors import RuntimeUnavailable
from herder.runtime import Attachment, ContainerSpec, Handle, get_runtime
from minions import runner

logger = logging.getLogger(__name__)

# Marks containers started for the pool (for operators: `docker ps --filter`).
POOLED_LABEL = "herder.pooled"
# After a failure to start one, wait this long before trying again.
_RETRY_SECONDS = 5.0
# How long a container given back may take to finish its reset; a slower one
# (its last run left much to clean) is removed instead.
_READY_SECONDS = 2.0
# How long a new container may take to start.
_START_SECONDS = 15.0


@dataclass
class Warm:
    handle: Handle
    attachment: Attachment
    runs: int = 0
    # Given back after a run: its runner's ready signal is still to be read,
    # of which `seen` came with the run's last frame.
    resetting: bool = False
    seen: bytes = b""
    # Set by a run of a client's beyond its first (HERDER_MINION_CPU_WEIGHT_EXTRA);
    # None: the engine's default. Put back before the container serves again.
    cpu_weight: int | None = None

    def is_fit(self) -> bool:
        if self.resetting:
            self.resetting = False
            return runner.await_ready(self.attachment, timeout=_READY_SECONDS, seen=self.seen)
        # An idle runner writes nothing: a readable stream means it ended.
        return self.attachment.is_quiet()

    def retire(self) -> None:
        """Close its stdin: the runner exits after its reset and the
        container removes itself."""
        self.attachment.close()


def start_warm(spec: ContainerSpec, *, timeout: float) -> Warm:
    """Create, attach and start a container, then wait for its runner's ready
    signal. Raises RuntimeUnavailable, the container removed, when none comes."""
    warm = Warm(*get_runtime().start_attached(spec))
    if not runner.await_ready(warm.attachment, timeout=timeout):
        warm.attachment.close()
        get_runtime().remove(warm.handle)
        raise RuntimeUnavailable(f"A {spec.image} container did not become ready.")
    return warm


class Pool:
    def __init__(self, make_spec) -> None:
        # make_spec(env) -> ContainerSpec of a cold run of that env.
        self._make_spec = make_spec
        self._idle: dict[str, deque[Warm]] = {}
        # Envs asked for since the last drain: only these are kept warm.
        self._wanted: set[str] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def size(self) -> int:
        return settings.HERDER_MINION_POOL_SIZE

    def take(self, env: str) -> Warm | None:
        """A ready container of `env`, or None (run cold). The caller owns it."""
        if self.size <= 0:
            return None
        with self._lock:
            self._wanted.add(env)
        self._ensure_filling()
        while True:
            with self._lock:
                queue = self._idle.get(env)
                warm = queue.popleft() if queue else None
            self._wake.set()
            if warm is None or warm.is_fit():
                return warm
            self._discard(warm)

    def give_back(self, env: str, warm: Warm) -> None:
        """A container whose run finished, for its next run. The most recently
        used go first; past twice the pool's size the freshest are retired."""
        warm.resetting = True
        surplus = []
        with self._lock:
            if self._closed or self.size <= 0:
                surplus.append(warm)
            else:
                queue = self._idle.setdefault(env, deque())
                queue.appendleft(warm)
                while len(queue) > 2 * self.size:
                    surplus.append(queue.pop())
        for each in surplus:
            each.retire()

    def container_ids(self) -> set[str]:
        with self._lock:
            return {warm.handle.id for queue in self._idle.values() for warm in queue}

    def idle(self, env: str) -> int:
        with self._lock:
            return len(self._idle.get(env, ()))

    def fill(self, env: str) -> None:
        """Start containers of `env` until the pool holds its size."""
        while not self._closed and self.idle(env) < self.size:
            spec: ContainerSpec = self._make_spec(env)
            spec.name = f"herder-minion-{secrets.token_hex(8)}"
            spec.labels[POOLED_LABEL] = "1"
            warm = start_warm(spec, timeout=_START_SECONDS)
            with self._lock:
                closed = self._closed
                if not closed:
                    self._idle.setdefault(env, deque()).append(warm)
            if closed:
                self._discard(warm)

    def drain(self) -> int:
        """Remove every idle container; the pool refills on its next use."""
        with self._lock:
            warm = [w for queue in self._idle.values() for w in queue]
            self._idle.clear()
            self._wanted.clear()
        for each in warm:
            self._discard(each)
        return len(warm)

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self.drain()

    def _discard(self, warm: Warm) -> None:
        warm.attachment.close()
        try:
            get_runtime().remove(warm.handle)
        except RuntimeUnavailable:
            pass

    def _ensure_filling(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._closed = False
                self._thread = threading.Thread(target=self._fill_forever, name="herder-minion-pool", daemon=True)
                self._thread.start()

    def _fill_forever(self) -> None:
        while not self._closed:
            self._wake.clear()
            try:
                with self._lock:
                    wanted = list(self._wanted)
                for env in wanted:
                    self.fill(env)
            except Exception as exc:
                logger.warning("minion pool: could not start a container: %s", exc)
                self._wake.wait(_RETRY_SECONDS)
                continue
            self._wake.wait(_RETRY_SECONDS)
