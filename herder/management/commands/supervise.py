import signal

from django.core.management.base import BaseCommand

from herder.supervisor import Supervisor


class Command(BaseCommand):
    help = "Run the supervisor alone (metering, reaping, adopting), for several-process deployments."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--once", action="store_true", help="One pass, then exit.")

    def handle(self, *args, once: bool, **options) -> None:
        supervisor = Supervisor.from_settings()
        if once:
            supervisor.run_once()
            return
        signal.signal(signal.SIGTERM, lambda *_: supervisor.stop())
        try:
            supervisor.run_forever()
        except KeyboardInterrupt:
            pass
