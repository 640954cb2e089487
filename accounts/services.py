"""Accounts, tokens and credits: the only code that changes balances.

Every change of a balance is one conditional UPDATE of the account row and
one CreditEntry row, in one transaction, so the balance always equals the
ledger's sum and never goes below zero.
"""

import hmac
import unicodedata
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator
from django.db import IntegrityError, transaction
from django.db.models import F, Sum
from django.utils import timezone
from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.utils import datetime_from_epoch

from accounts.models import Account, CreditEntry, Token
from accounts.tokens import AccountJWT
from herder.errors import (
    AlreadyGranted,
    BadInput,
    InsufficientCredits,
    InvalidToken,
    TokenGenerationOff,
    WrongPassword,
)

_validate_email = EmailValidator()
_IDENTIFIER_LENGTH = Account._meta.get_field("email").max_length
# Cc control, Cf format (zero-width, bidi overrides), Cs lone surrogates, Zl/Zp line
# and paragraph separators: invisible or breaking, they would let two names look alike.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Far beyond any use, and far from the 64-bit balance column's limit.
MAX_CREDITS = 10**15
_SUBJECT_LENGTH = CreditEntry._meta.get_field("subject").max_length
_NOTE_LENGTH = CreditEntry._meta.get_field("note").max_length


def account_identifier(identifier: str) -> str:
    """The account name for `identifier`: an email address or any other identifier
    (as the original's README has it), in its one stored form.

    Rules: 1 to 254 characters, no control, format (zero-width, bidi) or separator
    characters and no leading or trailing whitespace; Unicode in NFC. Email
    addresses are case-insensitive (stored lower-cased: Alice@X.org and alice@x.org
    share credits); any other identifier is kept exactly, case included, since it
    may come from a system where case matters. Raises BadInput.
    """
    if not isinstance(identifier, str) or not identifier:
        raise BadInput("An account identifier (an email address or any other name) is required.")
    identifier = unicodedata.normalize("NFC", identifier)
    if len(identifier) > _IDENTIFIER_LENGTH:
        raise BadInput(f"An account identifier has at most {_IDENTIFIER_LENGTH} characters.")
    if identifier != identifier.strip():
        raise BadInput(f"{identifier!r}: an account identifier may not start or end with whitespace.")
    bad = next((c for c in identifier if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        raise BadInput(
            f"{identifier!r}: an account identifier may not hold U+{ord(bad):04X} "
            f"({unicodedata.category(bad)}, a control, format or separator character)."
        )
    try:
        _validate_email(identifier)
    except ValidationError:
        return identifier
    return identifier.lower()


def account_get_or_create(*, email: str) -> Account:
    """The account of `email`, created with a zero balance when new. Raises BadInput."""
    account, _ = Account.objects.get_or_create(email=account_identifier(email))
    return account


def account_balance(account: Account) -> int:
    """The account's balance as the database has it now."""
    return Account.objects.values_list("balance", flat=True).get(pk=account.pk)


def account_ledger_sum(account: Account) -> int:
    """The sum of the account's ledger; always equal to its balance."""
    return CreditEntry.objects.filter(account=account).aggregate(total=Sum("amount"))["total"] or 0


def credits_grant(
    *, account: Account, amount: int, note: str = "", token: Token | None = None, kind: str = CreditEntry.Kind.GRANT
) -> CreditEntry:
    """Add `amount` credits to the account (kind "grant"), or change its balance
    by `amount` either way (kind "adjust", for operators), with a ledger row.

    A grant tied to a token can be written once per token. Returns the entry.
    Raises BadInput (an amount or kind that is not allowed), AlreadyGranted,
    InsufficientCredits (an adjustment below zero).
    """
    if kind not in (CreditEntry.Kind.GRANT, CreditEntry.Kind.ADJUST):
        raise BadInput(f"Credits are granted or adjusted, not {kind!r}.")
    if (
        isinstance(amount, bool)
        or not isinstance(amount, int)
        or amount == 0
        or abs(amount) > MAX_CREDITS
        or (kind == CreditEntry.Kind.GRANT and amount < 0)
    ):
        raise BadInput(f"{amount!r} credits cannot be {'granted' if kind == 'grant' else 'adjusted'}.")
    try:
        with transaction.atomic():
            updated = Account.objects.filter(pk=account.pk, balance__gte=max(0, -amount)).update(
                balance=F("balance") + amount
            )
            if updated == 0:
                raise InsufficientCredits(f"{account.email} has fewer than {-amount} credits.")
            entry = CreditEntry.objects.create(
                account=account, amount=amount, kind=kind, token=token, note=note[:_NOTE_LENGTH]
            )
    except IntegrityError:
        if token is not None and kind == CreditEntry.Kind.GRANT:
            raise AlreadyGranted(f"The credits of token {token.jti} were already granted.") from None
        raise
    return entry


def credits_spend(
    *, account: Account, amount: int, subject: str = "", note: str = "", hour: datetime | None = None
) -> int:
    """Take up to `amount` credits from the account, never going below zero,
    and record the spend for `subject` (e.g. a daemon's name).

    With `hour` (metering), the spend is added to the row of (account,
    subject, hour), created at the hour's first spend: one row per hour,
    updated in the same transaction as the balance, so the balance still
    equals the ledger's sum. The account row's lock orders concurrent
    spenders; a unique constraint keeps a second row out whatever happens.

    Safe to call concurrently from threads and processes: the account row is
    locked (PostgreSQL) or the database written by one transaction at a time
    (SQLite), and the debit is a conditional UPDATE. Returns the credits
    actually spent (0 when the balance is empty; then nothing is recorded).
    Raises BadInput for a negative amount.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise BadInput(f"Cannot spend {amount!r} credits.")
    if amount == 0:
        return 0
    with transaction.atomic():
        balance = Account.objects.select_for_update().values_list("balance", flat=True).get(pk=account.pk)
        spent = min(balance, amount)
        if spent <= 0:
            return 0
        updated = Account.objects.filter(pk=account.pk, balance__gte=spent).update(balance=F("balance") - spent)
        if updated == 0:  # only when a database ignores the lock above
            raise InsufficientCredits(f"{account.email} has fewer than {spent} credits.")
        subject = subject[:_SUBJECT_LENGTH]
        grown = hour is not None and (
            CreditEntry.objects.filter(account=account, kind=CreditEntry.Kind.SPEND, subject=subject, hour=hour).update(
                amount=F("amount") - spent
            )
        )
        if not grown:
            CreditEntry.objects.create(
                account=account,
                amount=-spent,
                kind=CreditEntry.Kind.SPEND,
                subject=subject,
                note=note[:_NOTE_LENGTH],
                hour=hour,
            )
    account.balance = balance - spent
    return spent


def token_mint(*, email: str, credits: int = 30000, lifetime: timedelta | None = None) -> str:
    """Mint a token for `email` (its account is created when new) and grant
    its `credits` to the account, once. `lifetime` defaults to
    settings.HERDER_TOKEN_LIFETIME.

    `email` is any account identifier (account_identifier). Returns the signed
    JWT. Raises BadInput for a malformed identifier, negative
    credits or a lifetime that is not positive.
    """
    if isinstance(credits, bool) or not isinstance(credits, int) or not 0 <= credits <= MAX_CREDITS:
        raise BadInput(f"Credits must be a whole number from 0 to {MAX_CREDITS}, not {credits!r}.")
    lifetime = settings.HERDER_TOKEN_LIFETIME if lifetime is None else lifetime
    if lifetime <= timedelta(0):
        raise BadInput("A token's lifetime must be positive.")
    email = account_identifier(email)
    with transaction.atomic():
        account = account_get_or_create(email=email)
        jwt = AccountJWT.for_user(account)
        jwt.set_exp(from_time=jwt.current_time, lifetime=lifetime)
        jwt["crd"] = credits
        token = Token.objects.create(
            jti=jwt["jti"],
            account=account,
            credits=credits,
            issued=datetime_from_epoch(jwt["iat"]),
            expires=datetime_from_epoch(jwt["exp"]),
        )
        if credits:
            credits_grant(account=account, amount=credits, token=token, note="minted")
    return str(jwt)


def token_authenticate(raw: str) -> tuple[Account, Token]:
    """The account and token a raw JWT names, once its signature, algorithm,
    claims and expiry check out and it is not revoked.

    Raises InvalidToken.
    """
    try:
        jwt = AccountJWT((raw or "").strip())
    except TokenError as exc:
        raise InvalidToken(f"The token is not valid: {exc}.") from None
    token = Token.objects.select_related("account").filter(jti=jwt["jti"]).first()
    if token is None or token.account.email != jwt["sub"]:
        raise InvalidToken("The token is not valid: this herder did not mint it.")
    if token.is_revoked:
        raise InvalidToken("The token was revoked.")
    if token.is_expired:
        raise InvalidToken("The token is not valid: Token 'exp' claim has expired.")
    return token.account, token


def token_revoke(*, token: Token) -> Token:
    """Revoke the token from now on; a token revoked before keeps its time."""
    Token.objects.filter(pk=token.pk, revoked__isnull=True).update(revoked=timezone.now())
    token.refresh_from_db(fields=["revoked"])
    return token


def token_generate(*, password: str, email: str, credits: str | int | None = None) -> tuple[str, str, int]:
    """POST /token/v1/generate: mint a token when `password` is the configured
    token password (compared in constant time); `credits` may be text from a
    form, empty for the default.

    Returns (token, email, credits). Raises TokenGenerationOff when no password
    is configured, WrongPassword, then BadInput.
    """
    expected = settings.HERDER_TOKEN_PASSWORD
    if not expected:
        raise TokenGenerationOff()
    if not hmac.compare_digest((password or "").encode(), expected.encode()):
        raise WrongPassword()
    if credits is None or credits == "":
        credits = settings.HERDER_TOKEN_DEFAULT_CREDITS
    elif isinstance(credits, str):
        try:
            credits = int(credits.strip())
        except ValueError:
            raise BadInput(f"Credits must be a whole number, not {credits!r}.") from None
    raw = token_mint(email=email, credits=credits)
    return raw, account_identifier(email), credits


def token_inspect(raw: str) -> Account:
    """GET /token/v1/inspect/<token>: the account of a valid token, whose
    balance is what every token of it may still spend. Raises InvalidToken."""
    account, _ = token_authenticate(raw)
    return account
