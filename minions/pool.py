"""Warm minion containers: created, attached and started ahead of time.

A warm container is exactly a cold one (same sandbox, same herder-run) whose
runner already waits for its request on stdin, so a run costs no Docker call
on its critical path. Each serves one run and removes itself afterwards; a
background thread keeps HERDER_MINION_POOL_SIZE of them per env ready.

A pooled container is labelled herder.pooled: the supervisor's orphan reaper
leaves it alone, since an idle one whose herder process died reads EOF on its
stdin, exits and removes itself.
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

logger = logging.getLogger(__name__)

POOLED_LABEL = "herder.pooled"
# After a failure to start one, wait this long before trying again.
_RETRY_SECONDS = 5.0


@dataclass
class Warm:
    handle: Handle
    attachment: Attachment

    def is_alive(self) -> bool:
        # An idle runner writes nothing: a readable stream means it ended.
        return self.attachment.is_quiet()


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
            if warm is None or warm.is_alive():
                return warm
            self._discard(warm)

    def idle(self, env: str) -> int:
        with self._lock:
            return len(self._idle.get(env, ()))

    def fill(self, env: str) -> None:
        """Start containers of `env` until the pool holds its size."""
        while not self._closed and self.idle(env) < self.size:
            spec: ContainerSpec = self._make_spec(env)
            spec.name = f"herder-minion-{secrets.token_hex(8)}"
            spec.labels[POOLED_LABEL] = "1"
            warm = Warm(*get_runtime().start_attached(spec))
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
                self._thread = threading.Thread(target=self._fill_forever, name="herder-minion-pool",
                                                daemon=True)
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
