from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import token_mint
from herder.errors import BadInput


class Command(BaseCommand):
    help = (
        "Print a new token for EMAIL (an email address or any identifier) and add its credits to the account. "
        "Works while the herder runs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "-e", "--email", required=True, help="The account: an email address or any other identifier."
        )
        parser.add_argument(
            "-c",
            "--credits",
            type=int,
            default=settings.HERDER_TOKEN_DEFAULT_CREDITS,
            help="Credits to grant (default %(default)s).",
        )

    def handle(self, *args, email: str, credits: int, **options) -> None:
        try:
            token = token_mint(email=email, credits=credits)
        except BadInput as exc:
            raise CommandError(str(exc.detail)) from None
        self.stdout.write(token)
