"""The supervisor: the herder's periodic duties (reaping, metering, adopting).

Each duty is called once per interval with no arguments. One failing duty is
logged and does not stop the others. A duty that needs the next pass sooner
(an account runs out of credits in 3 s) returns NextPass(seconds); anything
else it returns (a count of what it reaped, None) leaves the interval alone.
Two kinds:

- HERDER_SUPERVISOR_DUTIES are the deployment's (metering, adopting, reaping
  golems): only the process holding the lease (herder/lease.py) runs them, so
  several herder processes never meter or restart the same thing twice.
- HERDER_SUPERVISOR_LOCAL_DUTIES concern what each process holds itself (its
  runs and warm containers): every process runs them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections
from django.utils.module_loading import import_string

from herder.errors import RuntimeUnavailable
from herder.lease import Lease, lease_from_settings

logger = logging.getLogger(__name__)

# Set to run the duties now rather than at the next interval: a daemon spawned
# or stopped changes when its account runs out (daemons.services). Only this
# process's supervisor hears it; another process's spawn is seen within one
# interval, when the leader's pass reschedules.
_wake = threading.Event()

# How far past a duty's asked-for moment to wake, so that the moment has passed
# on the database's clock too (metering charges whole seconds up to now).
_MARGIN = 0.05


class NextPass(float):
    """A duty's answer: run the next pass within this many seconds. Its own
    type, because a plain number is what a duty reaping things returns as its
    count: read as seconds, a count of 0 had the supervisor pass 20 times a
    second, holding the GIL from the event loop a quarter of the time."""


def wake() -> None:
    """Run this process's supervisor pass now (when it leads, every duty)."""
    _wake.set()


class Supervisor:
    def __init__(
        self,
        *,
        interval: float,
        duties: list[Callable[[], object]],
        local_duties: list[Callable[[], object]] = (),
        lease: Lease | None = None,
    ) -> None:
        """Without a lease, this supervisor runs every duty (one process, or a test)."""
        self.interval = interval
        self.duties = duties
        self.local_duties = list(local_duties)
        self.lease = lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls) -> Supervisor:
        return cls(
            interval=settings.HERDER_SUPERVISOR_INTERVAL,
            duties=[import_string(path) for path in settings.HERDER_SUPERVISOR_DUTIES],
            local_duties=[import_string(path) for path in settings.HERDER_SUPERVISOR_LOCAL_DUTIES],
            lease=lease_from_settings(),
        )

    def leading(self) -> bool:
        """Hold (or take) the lease; log when it changes hands here."""
        if self.lease is None:
            return True
        was = self.lease.held
        try:
            held = self.lease.hold()
        except Exception:
            logger.exception("the supervisor lease could not be tried")
            held = False
        if held != was:
            logger.info("supervisor lease %s by process %d", "taken" if held else "lost", os.getpid())
        return held

    def run_once(self) -> float:
        """Run the duties once; returns the seconds until the next pass: the
        interval, or sooner when a duty answered NextPass (the moment an
        account's daemons run out of credits)."""
        duties = self.local_duties + (self.duties if self.leading() else [])
        wait = self.interval
        for duty in duties:
            try:
                due = duty()
                if isinstance(due, NextPass):
                    wait = min(wait, max(0.0, due) + _MARGIN)
            except RuntimeUnavailable:
                logger.warning("%s: the container engine is unavailable", duty.__qualname__)
            except Exception:
                logger.exception("%s failed", duty.__qualname__)
            finally:
                close_old_connections()
        return wait

    def run_forever(self) -> None:
        """Run the duties every interval until stop() is called."""
        while not self._stop.is_set():
            _wake.clear()
            wait = self.run_once()
            if not self._stop.is_set():
                _wake.wait(wait)

    def start(self) -> None:
        """Run in a background thread beside the server."""
        self._thread = threading.Thread(target=self.run_forever, name="herder-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        _wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.lease is not None:
            # Handed on at once, not when this process is gone.
            self.lease.release()
