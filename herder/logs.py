"""Structured log lines, and the request id every line of a request carries.

One event, one line: `log_event(logger, "minion.run", env="python", ...)`
writes `minion.run env=python ...` in text and `{"event": "minion.run",
"env": "python", ...}` in JSON (`HERDER_LOG_FORMAT`, herder/settings.py's
LOGGING). The request id lives in a context variable set by the ASGI layer
(herder/requestlog.py); asgiref's sync_to_async copies the context into the
threads Django runs views in, so lines logged anywhere inside a request carry
it. Lines outside any request (the supervisor, pool threads) carry "-".
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import secrets
import time

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("herder_request_id", default="-")

# What an incoming X-Request-Id may be to be kept: short, and nothing a log
# reader or a header could trip on (no spaces, quotes, control characters).
_SAFE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,64}")


def new_request_id() -> str:
    return secrets.token_hex(16)


def safe_request_id(value: str | None) -> str | None:
    """`value` when it may be used as a request id as it is, else None."""
    if value and _SAFE_ID.fullmatch(value):
        return value
    return None


def log_event(logger: logging.Logger, event: str, *, level: int = logging.INFO, **fields) -> None:
    """One structured line: `event` and its fields (values str, int, float, bool or None)."""
    if not logger.isEnabledFor(level):
        return
    logger.log(level, "%s", event, extra={"event": event, "fields": fields})


_make_record = logging.getLogRecordFactory()


def _record_with_request_id(*args, **kwargs) -> logging.LogRecord:
    # Stamped when the line is logged, in the request's context, whichever
    # handler formats it later (and in whatever thread).
    record = _make_record(*args, **kwargs)
    record.request_id = request_id.get()
    return record


if not getattr(_make_record, "herder", False):
    _record_with_request_id.herder = True
    logging.setLogRecordFactory(_record_with_request_id)


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (handlers' filter)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True


def _text_value(value) -> str:
    text = "" if value is None else str(value)
    if text == "" or re.search(r'[\s"=]', text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [request id]: message key=value ...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            # Appended after the message (and before any traceback's first line
            # would be confusing, so tracebacks stay last).
            head, sep, tail = line.partition("\n")
            pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items() if value is not None)
            line = f"{head} {pairs}{sep}{tail}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, request_id, message or
    event and its fields, and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", None) or request_id.get(),
        }
        event = getattr(record, "event", None)
        if event:
            entry["event"] = event
            for key, value in (getattr(record, "fields", None) or {}).items():
                entry.setdefault(key, value)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
