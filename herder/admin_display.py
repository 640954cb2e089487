"""How the admin shows values to operators: times with seconds and zone, units
on sizes and durations, booleans as words, and every custom action in the
admin's log (LogEntry) like the stock add/change/delete."""

from __future__ import annotations

from datetime import datetime

from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import Model
from django.http import HttpRequest
from django.utils import timezone

EMPTY = "-"


def when(value: datetime | None) -> str:
    if value is None:
        return EMPTY
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S %Z")


def size(value: int | None) -> str:
    if value is None:
        return EMPTY
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return EMPTY


def millis(value: int | None) -> str:
    if value is None:
        return EMPTY
    return f"{value} ms" if value < 1000 else f"{value / 1000:.2f} s"


def yes_no(value: bool | None) -> str:
    return EMPTY if value is None else ("yes" if value else "no")


def log_action(request: HttpRequest, obj: Model, message: str) -> None:
    """Record an operator's custom action (stop, kill, revoke, grant...) in the
    admin's log, shown in "Recent actions" and on the object's history page."""
    LogEntry.objects.log_actions(
        user_id=request.user.pk, queryset=[obj], action_flag=CHANGE, change_message=message, single_object=True
    )
