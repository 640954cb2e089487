import logging
import socket

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from herder.servers import SERVERS
from herder.sharedslots import start_sharing
from herder.supervisor import Supervisor
from herder.workers import Workers, exit_with_parent, listen
from minions.services import minion_abort_all

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Run the whole herder: the ASGI server and the supervisor, in one process or several workers."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--server",
            choices=sorted(SERVERS),
            default=settings.HERDER_SERVER,
            help="The ASGI server (default: %(default)s).",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=settings.HERDER_WORKERS,
            help="Processes serving the port (default: %(default)s; more than one needs REDIS_URL).",
        )
        parser.add_argument(
            "--no-supervisor", action="store_true", help="Serve only; run `manage.py supervise` elsewhere."
        )
        parser.add_argument("--access-log", action="store_true", help="Log every request.")
        # Internal: this process is a worker of the `herd` process with this pid.
        parser.add_argument("--worker-of", type=int, default=0, help="(internal)")
        # Internal: the listening socket it inherited.
        parser.add_argument("--fd", type=int, default=-1, help="(internal)")

    def handle(
        self,
        *args,
        host: str,
        port: int,
        server: str,
        workers: int,
        no_supervisor: bool,
        access_log: bool,
        worker_of: int,
        fd: int,
        **options,
    ) -> None:
        if workers < 1:
            raise CommandError("--workers must be at least 1.")
        if workers > 1 and not worker_of:
            if not settings.REDIS_URL:
                raise CommandError(
                    "--workers above 1 needs REDIS_URL: the in-memory channel layer and cache "
                    "cannot span processes (pairing and rate limits would break)."
                )
            self.stdout.write(
                f"herder: serving on http://{host}:{port}/ with {workers} {server} workers "
                "(admin at /admin/, API docs at /api/docs/)"
            )
            self.stdout.flush()
            worker_args = ["--host", host, "--port", str(port), "--server", server, "--workers", "1"]
            worker_args += ["--no-supervisor"] * no_supervisor + ["--access-log"] * access_log
            try:
                sock = listen(host, port)
            except OSError as exc:
                raise CommandError(f"cannot listen on {host}:{port}: {exc}") from None
            code = Workers(workers, worker_args, sock).run()
            if code:
                raise CommandError("the workers could not start")
            return
        self.serve(
            host=host,
            port=port,
            server=server,
            no_supervisor=no_supervisor,
            access_log=access_log,
            worker_of=worker_of,
            fd=fd,
        )

    def serve(
        self, *, host: str, port: int, server: str, no_supervisor: bool, access_log: bool, worker_of: int, fd: int
    ) -> None:
        from herder.asgi import application

        sock = None
        if worker_of:
            exit_with_parent(worker_of)
            sock = socket.socket(fileno=fd)
        supervisor = None if no_supervisor else Supervisor.from_settings()
        if supervisor is not None:
            supervisor.start()
        sharing = start_sharing()  # per-client limits across processes
        if not worker_of:
            self.stdout.write(
                f"herder: serving on http://{host}:{port}/ with {server} (admin at /admin/, API docs at /api/docs/)"
            )
            self.stdout.flush()
        try:
            # At a signal, end the runs in progress first: their threads
            # would otherwise keep the process alive until their time limits.
            SERVERS[server](
                application, host=host, port=port, access_log=access_log, on_signal=minion_abort_all, sock=sock
            )
        finally:
            removed = minion_abort_all()
            if removed:
                logger.info("removed %d minion containers of runs in progress", removed)
            if supervisor is not None:
                supervisor.stop()
            if sharing is not None:
                sharing.stop()
