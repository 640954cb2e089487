"""The supervisor's lease: one holder at a time over every herder process of a
deployment (several `herd` processes, several workers of one, several nodes).

- PostgreSQL: a session advisory lock taken on a connection of its own, kept
  open for as long as the lease is held. The server releases it when that
  connection ends, however the holder died (kill -9, a lost node: once the
  server's TCP keepalive notices).
- Any other database (SQLite, one machine): an flock on a file in
  HERDER_DATA_DIR, released by the kernel when the holding process dies.

Neither needs a renewal write: a live holder keeps it, a dead one loses it at
once, and the others try again every supervisor interval, so the lease passes
within one or two intervals.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from pathlib import Path

from django.conf import settings
from django.db import connections

logger = logging.getLogger(__name__)

# One key per database: every herder of a deployment shares its database.
LEASE_NAME = "herder.supervisor"
ADVISORY_KEY = int.from_bytes(hashlib.sha256(LEASE_NAME.encode()).digest()[:8], "big", signed=True)


class Lease:
    """Try to hold it with `hold()` (never blocks); `release()` gives it up."""

    held = False

    def hold(self) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        raise NotImplementedError


class AdvisoryLease(Lease):
    """pg_try_advisory_lock on a dedicated connection (not Django's: those are
    closed between requests and per thread, and closing one would drop the lock)."""

    def __init__(self, alias: str = "default", *, connect=None) -> None:
        """`connect` opens the dedicated connection (default: to the database `alias`)."""
        self.alias = alias
        self._connection = None
        if connect is not None:
            self._connect = connect

    def _connect(self):
        wrapper = connections.create_connection(self.alias)
        params = wrapper.get_connection_params()
        # The server notices a vanished holder (a dead node) within about a minute.
        params.update(keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
        # Never from the connection pool (HERDER_DB_POOL): the lock lives as long
        # as this session, which must be the lease's alone.
        connection = wrapper.Database.connect(**params)
        connection.autocommit = True
        return connection

    def hold(self) -> bool:
        try:
            if self._connection is None or self._connection.closed:
                self.held = False
                self._connection = self._connect()
            with self._connection.cursor() as cursor:
                if self.held:
                    # Still ours as long as the session is: check it is alive.
                    cursor.execute("SELECT 1")
                else:
                    cursor.execute("SELECT pg_try_advisory_lock(%s)", [ADVISORY_KEY])
                    self.held = bool(cursor.fetchone()[0])
        except Exception:
            # The session (and with it the lock, if we had it) is gone.
            logger.warning("the supervisor lease's database connection failed", exc_info=True)
            self._drop()
        return self.held

    def _drop(self) -> None:
        self.held = False
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:
                pass
        self._connection = None

    def release(self) -> None:
        # Closing the session releases the lock.
        self._drop()


class FileLease(Lease):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def hold(self) -> bool:
        if self.held:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd, self.held = fd, True
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd, self.held = None, False


def lease_from_settings() -> Lease:
    if connections["default"].vendor == "postgresql":
        return AdvisoryLease()
    return FileLease(Path(settings.HERDER_DATA_DIR) / "supervisor.lock")
