"""Accounts, their tokens, and the credit ledger.

The ledger (CreditEntry) is the record: one append-only row for every grant,
spend and adjustment. Account.balance is kept equal to the ledger's sum by
accounts.services, which changes both in one transaction; a check
constraint keeps it from going negative whatever runs concurrently.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone


class Account(models.Model):
    """An email address, or any other identifier, with a credit balance. Shared by all its tokens."""

    # Named "email" as in the original's API; any identifier (accounts.services.account_identifier).
    email = models.CharField(max_length=254, unique=True)
    # Equal to the sum of this account's ledger; changed only by services.
    balance = models.BigIntegerField(default=0, editable=False)
    created = models.DateTimeField(default=timezone.now, editable=False)

    # DRF and Channels ask these of whatever authenticated a request.
    is_authenticated = True
    is_anonymous = False

    class Meta:
        ordering = ["email"]
        constraints = [
            models.CheckConstraint(condition=Q(balance__gte=0), name="account_balance_not_negative"),
        ]

    def __str__(self) -> str:
        return self.email


class Token(models.Model):
    """A minted JWT, known by its `jti`. The signed text itself is not stored."""

    jti = models.CharField(max_length=64, unique=True)
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="tokens")
    credits = models.PositiveBigIntegerField(help_text="Credits granted when it was minted.")
    issued = models.DateTimeField(db_index=True)
    expires = models.DateTimeField()
    revoked = models.DateTimeField(null=True, blank=True, help_text="When it was revoked; empty while valid.")

    class Meta:
        ordering = ["-issued"]

    def __str__(self) -> str:
        return f"{self.jti} ({self.account.email})"

    @property
    def is_revoked(self) -> bool:
        return self.revoked is not None

    @property
    def is_expired(self) -> bool:
        return self.expires <= timezone.now()


class CreditEntry(models.Model):
    """One change of an account's balance. Rows are never deleted; the one
    exception to never updated is a daemon's metering row of the current hour
    (`hour` set), whose amount accounts.services.credits_spend grows in the
    same transaction as the balance: one row per daemon per hour, not one per
    supervisor pass."""

    class Kind(models.TextChoices):
        GRANT = "grant", "grant"
        SPEND = "spend", "spend"
        ADJUST = "adjust", "adjust"

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="entries")
    amount = models.BigIntegerField(help_text="Credits added (positive) or taken (negative).")
    kind = models.CharField(max_length=8, choices=Kind.choices, db_index=True)
    token = models.ForeignKey(Token, null=True, blank=True, on_delete=models.PROTECT, related_name="entries")
    subject = models.CharField(
        max_length=200, blank=True, db_index=True, help_text="What the credits paid for, e.g. a daemon's name."
    )
    note = models.CharField(max_length=500, blank=True)
    created = models.DateTimeField(default=timezone.now, db_index=True)
    # Metering: the hour (UTC, truncated) this spend row adds up; empty for any other row.
    hour = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created", "-pk"]
        verbose_name_plural = "credit entries"
        constraints = [
            # Minting grants a token's credits once; a second grant cannot be written.
            models.UniqueConstraint(fields=["token"], condition=Q(kind="grant"), name="one_grant_per_token"),
            models.CheckConstraint(condition=~Q(amount=0), name="credit_entry_not_zero"),
            models.CheckConstraint(condition=~Q(kind="grant") | Q(amount__gt=0), name="credit_grant_positive"),
            models.CheckConstraint(condition=~Q(kind="spend") | Q(amount__lt=0), name="credit_spend_negative"),
            # One metering row per account, subject and hour, whichever leader writes it.
            models.UniqueConstraint(
                fields=["account", "subject", "hour"], condition=Q(hour__isnull=False), name="one_spend_row_per_hour"
            ),
        ]
        indexes = [models.Index(fields=["account", "-created"], name="credit_entry_account_created")]

    def __str__(self) -> str:
        return f"{self.account.email} {self.kind} {self.amount:+d}"

    def save(self, *args, **kwargs) -> None:
        if not self._state.adding:
            raise ValueError("Credit entries are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Credit entries are append-only.")
