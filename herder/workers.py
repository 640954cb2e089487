"""`herd --workers N`: one port served by N herder processes.

Each worker is a whole `herd` process (its ASGI server, its own signal handling
that ends its runs, its supervisor, which leads only while it holds the lease).
They accept from one listening socket, bound by the parent and inherited: a
worker that dies (kill -9) or drains loses no connection still queued (the
others accept it), and a replacement serves the same socket at once. (Separate
SO_REUSEPORT sockets would balance more evenly but drop a dead worker's queue.)
What workers share goes through the channel layer, the cache (Redis) and the
database.

The parent only supervises: it restarts a worker that dies (kill -9, a crash)
while the others keep serving, forwards SIGTERM/SIGINT to every worker and
waits for each to drain, and exits when they have.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

from herder import metrics

logger = logging.getLogger(__name__)

# A worker that dies this soon after its start, this many times in a row, will
# not come up (a port taken, a bad setting): stop rather than loop.
EARLY_DEATH = 10.0
EARLY_DEATHS = 3
# SIGTERM asks a worker to end its runs and close its sockets; past this, SIGKILL.
DRAIN_SECONDS = 30.0


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def exit_with_parent(parent: int) -> None:
    """A worker whose parent vanished (kill -9) drains itself instead of serving
    on unsupervised."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        logger.warning("the herd parent %d is gone: stopping worker %d", parent, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="herder-parent-watch", daemon=True).start()


class Workers:
    def __init__(self, count: int, worker_args: list[str], sock: socket.socket) -> None:
        self.count = count
        self.sock = sock
        self.worker_args = worker_args
        self.workers: dict[int, tuple[subprocess.Popen, float]] = {}  # slot -> (process, started)
        self.early_deaths = 0
        self.stopping = False
        self.signalled: set[int] = set()

    def _start(self, slot: int) -> None:
        env = dict(os.environ)
        # `python -m django` must find the project whatever the current folder.
        from django.conf import settings

        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(settings.BASE_DIR), env.get("PYTHONPATH")]))
        env.setdefault("DJANGO_SETTINGS_MODULE", os.environ.get("DJANGO_SETTINGS_MODULE", "herder.settings"))
        # Each holds its share of the machine's totals (herder/settings.py).
        env["HERDER_WORKERS_HERE"] = str(self.count)
        command = [
            sys.executable,
            "-m",
            "django",
            "herd",
            *self.worker_args,
            "--worker-of",
            str(os.getpid()),
            "--fd",
            str(self.sock.fileno()),
        ]
        # A session of its own: a terminal's Ctrl-C reaches the parent only,
        # which then stops every worker once (a second SIGINT would force uvicorn out).
        process = subprocess.Popen(command, env=env, start_new_session=True, pass_fds=[self.sock.fileno()])
        self.workers[slot] = (process, time.monotonic())
        logger.info("worker %d started (pid %d)", slot, process.pid)

    @staticmethod
    def _share_metrics() -> None:
        """Workers write their samples into one folder, so a scrape answered by
        any of them sums all (prometheus_client reads the variable itself); it
        is emptied first, or an earlier run's samples would be summed in."""
        from django.conf import settings

        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(settings.HERDER_DATA_DIR / "prometheus"))
        metrics.multiprocess_reset()

    def pids(self) -> list[int]:
        return [process.pid for process, _ in self.workers.values()]

    def _stop(self, signum, frame) -> None:
        self.stopping = True
        for process, _ in list(self.workers.values()):
            if process.poll() is None and process.pid not in self.signalled:
                self.signalled.add(process.pid)
                process.send_signal(signal.SIGTERM)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        self._share_metrics()
        for slot in range(self.count):
            self._start(slot)
        while not self.stopping:
            for slot, (process, started) in list(self.workers.items()):
                code = process.poll()
                if code is None or self.stopping:
                    continue
                logger.warning("worker %d (pid %d) exited with %s: starting another", slot, process.pid, code)
                metrics.process_dead(process.pid)
                self.early_deaths = self.early_deaths + 1 if time.monotonic() - started < EARLY_DEATH else 0
                if self.early_deaths >= EARLY_DEATHS:
                    logger.error("workers keep dying at start: stopping")
                    self._stop(None, None)
                    break
                self._start(slot)
            time.sleep(0.2)
        return self._drain()

    def _drain(self) -> int:
        self._stop(None, None)  # a worker started as the signal came
        deadline = time.monotonic() + DRAIN_SECONDS
        for process, _ in self.workers.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("worker %d did not drain in time: killing it", process.pid)
                process.kill()
                process.wait()
            metrics.process_dead(process.pid)
        return 1 if self.early_deaths >= EARLY_DEATHS else 0
