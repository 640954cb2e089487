import logging

from django.conf import settings
from django.core.management.base import BaseCommand

from herder.servers import SERVERS
from herder.supervisor import Supervisor
from minions.services import minion_abort_all

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the whole herder in one process: the ASGI server and the supervisor."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--server", choices=sorted(SERVERS), default=settings.HERDER_SERVER,
                            help="The ASGI server (default: %(default)s).")
        parser.add_argument("--no-supervisor", action="store_true",
                            help="Serve only; run `manage.py supervise` elsewhere.")
        parser.add_argument("--access-log", action="store_true", help="Log every request.")

    def handle(self, *args, host: str, port: int, server: str, no_supervisor: bool,
               access_log: bool, **options) -> None:
        from herder.asgi import application

        supervisor = None if no_supervisor else Supervisor.from_settings()
        if supervisor is not None:
            supervisor.start()
        self.stdout.write(f"herder: serving on http://{host}:{port}/ with {server} "
                          "(admin at /admin/, API docs at /api/docs/)")
        self.stdout.flush()
        try:
            # At a signal, end the runs in progress first: their threads
            # would otherwise keep the process alive until their time limits.
            SERVERS[server](application, host=host, port=port, access_log=access_log,
                            on_signal=minion_abort_all)
        finally:
            removed = minion_abort_all()
            if removed:
                logger.info("removed %d minion containers of runs in progress", removed)
            if supervisor is not None:
                supervisor.stop()
