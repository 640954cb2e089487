import logging
import signal
import sys
import threading

from daphne.access import AccessLogGenerator
from daphne.endpoints import build_endpoint_description_strings
from daphne.server import Server
from django.core.management.base import BaseCommand

from herder.supervisor import Supervisor
from minions.services import minion_abort_all

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the whole herder in one process: the ASGI server and the supervisor."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--no-supervisor", action="store_true",
                            help="Serve only; run `manage.py supervise` elsewhere.")
        parser.add_argument("--access-log", action="store_true", help="Log every request.")

    def handle(self, *args, host: str, port: int, no_supervisor: bool, access_log: bool,
               **options) -> None:
        from herder.asgi import application

        supervisor = None if no_supervisor else Supervisor.from_settings()
        if supervisor is not None:
            supervisor.start()
        self.stdout.write(f"herder: serving on http://{host}:{port}/ (admin at /admin/, API docs at /api/docs/)")
        self.stdout.flush()
        self._stop_on_signals()
        try:
            Server(
                application=application,
                endpoints=build_endpoint_description_strings(host=host, port=port),
                action_logger=AccessLogGenerator(sys.stdout) if access_log else None,
                # Minion runs may take the whole time limit.
                http_timeout=None,
                signal_handlers=False,
            ).run()
        finally:
            removed = minion_abort_all()
            if removed:
                logger.info("removed %d minion containers of runs in progress", removed)
            if supervisor is not None:
                supervisor.stop()

    def _stop_on_signals(self) -> None:
        """On SIGINT/SIGTERM end the runs in progress first: their threads would
        otherwise keep the process alive until their time limits."""
        from twisted.internet import reactor

        def stop(signum, frame) -> None:
            threading.Thread(target=minion_abort_all, name="herder-abort").start()
            reactor.callFromThread(reactor.stop)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
