"""The supervisor: the herder's periodic duties (reaping, metering, adopting).

Each duty named in HERDER_SUPERVISOR_DUTIES is called once per interval with no
arguments. One failing duty is logged and does not stop the others.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from django.conf import settings
from django.db import close_old_connections
from django.utils.module_loading import import_string

from herder.errors import RuntimeUnavailable

logger = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, *, interval: float, duties: list[Callable[[], object]]) -> None:
        self.interval = interval
        self.duties = duties
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls) -> Supervisor:
        return cls(
            interval=settings.HERDER_SUPERVISOR_INTERVAL,
            duties=[import_string(path) for path in settings.HERDER_SUPERVISOR_DUTIES],
        )

    def run_once(self) -> None:
        for duty in self.duties:
            try:
                duty()
            except RuntimeUnavailable:
                logger.warning("%s: the container engine is unavailable", duty.__qualname__)
            except Exception:
                logger.exception("%s failed", duty.__qualname__)
            finally:
                close_old_connections()

    def run_forever(self) -> None:
        """Run the duties every interval until stop() is called."""
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.interval)

    def start(self) -> None:
        """Run in a background thread beside the server."""
        self._thread = threading.Thread(target=self.run_forever, name="herder-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
