"""Who a client is, and whether it may start one more thing.

Views and consumers ask here once, in one line, and get a typed error
(`TooManyRequests`, 429 with Retry-After) that the one handler renders:

    client = client_of(request.scope)               # or a consumer's self.scope
    rate_check("golem-spawn", client, settings.HERDER_GOLEM_SPAWN_RATE)
    with slots["minion"].hold(client):              # concurrent work, per client and in total
        ...

Rates are counted in Django's cache (Redis when REDIS_URL is set, so every
process shares them; else this process's memory). Slots count work in progress
in this process. Every refusal is remembered for /pressure and the metrics.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured

from herder.errors import TooManyRequests
from herder.metrics import count_refusal

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([smhd])\w*\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Rate:
    count: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> Rate | None:
        """`"20/h"`, `"5/10s"`, `"100/m"`; empty or `"0"` means no limit (None)."""
        if not text or text.strip() in ("0", "off", "none"):
            return None
        match = _RATE.match(text)
        if not match:
            raise ImproperlyConfigured(f"A rate is N/s, N/m, N/h or N/d (e.g. 20/h), not {text!r}")
        count, multiple, unit = match.groups()
        return cls(int(count), int(multiple or 1) * _UNITS[unit])


def _trusted(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _trusted_networks())


_networks_cache: tuple[tuple[str, ...], list] = ((), [])


def _trusted_networks() -> list:
    global _networks_cache
    configured = tuple(settings.HERDER_TRUSTED_PROXIES)
    if _networks_cache[0] != configured:
        _networks_cache = (configured, [ipaddress.ip_network(n, strict=False) for n in configured])
    return _networks_cache[1]


def client_address(scope: dict) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy,
    the right-most `X-Forwarded-For` hop that is not a trusted proxy itself
    (a client can prepend anything; only what our proxies appended counts)."""
    peer = (scope.get("client") or ("unknown", 0))[0] or "unknown"
    if not _trusted(peer):
        return peer
    forwarded = [
        value.decode("latin-1")
        for name, value in scope.get("headers", [])
        if name == b"x-forwarded-for"
    ]
    hops = [hop.strip() for line in forwarded for hop in line.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop):
            return hop
    return hops[0] if hops else peer


def client_of(scope: dict) -> str:
    """A client's key for limits: its account when it holds a token, else its address."""
    account = scope.get("account")
    email = getattr(account, "email", None)
    if email:
        return f"account:{email}"
    return f"addr:{client_address(scope)}"


def client_of_request(request) -> str:
    """`client_of` for a Django or DRF request: its ASGI scope, or under WSGI
    (the test client) one made of its META."""
    request = getattr(request, "_request", request)
    scope = getattr(request, "scope", None)
    if scope is None:
        meta = request.META
        headers = [(b"x-forwarded-for", meta["HTTP_X_FORWARDED_FOR"].encode("latin-1"))] \
            if "HTTP_X_FORWARDED_FOR" in meta else []
        scope = {"client": (meta.get("REMOTE_ADDR") or "unknown", 0), "headers": headers}
    return client_of(scope)


# --- Refusals, remembered for /pressure and the metrics ----------------------

_refusals_lock = threading.Lock()
_refusals: deque[tuple[float, str]] = deque(maxlen=1000)
refusal_totals: Counter[str] = Counter()


def refuse(reason: str, detail: str, *, wait: float = 1) -> TooManyRequests:
    """Record a refusal for load and return the error to raise."""
    with _refusals_lock:
        _refusals.append((time.time(), reason))
        refusal_totals[reason] += 1
    count_refusal(reason)  # herder_refused_total
    return TooManyRequests(detail, wait=wait)


def recent_refusals(seconds: float = 60) -> dict[str, int]:
    """Refusals of the last `seconds`, by reason."""
    since = time.time() - seconds
    with _refusals_lock:
        return dict(Counter(reason for at, reason in _refusals if at >= since))


# --- Rates --------------------------------------------------------------------

def rate_check(bucket: str, client: str, rate: Rate | str | None) -> None:
    """Count one event of `client` in `bucket`; raise 429 past `rate` in its
    current window (fixed windows: cheap and shared through the cache)."""
    if isinstance(rate, str):
        rate = Rate.parse(rate)
    if rate is None:
        return
    now = time.time()
    window = int(now // rate.seconds)
    key = f"herder:rate:{bucket}:{client}:{window}"
    # add() then incr() is atomic on Redis and under the local cache's lock.
    cache.add(key, 0, timeout=rate.seconds + 1)
    try:
        count = cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=rate.seconds + 1)
        count = 1
    if count > rate.count:
        wait = (window + 1) * rate.seconds - now
        raise refuse(bucket, f"Too many requests of this kind; at most {rate.count} per "
                             f"{rate.seconds} s.", wait=wait)


# --- Slots: work in progress, per client and in total ------------------------

class Slots:
    """Counts work in progress in this process, per client and in total.

    `hold(client)` refuses at once (429) past either limit; a limit of 0 or
    None is no limit. Limits are read on every call, so tests and settings
    changes apply without restarting.
    """

    def __init__(self, name: str, *, per_client: str, total: str) -> None:
        self.name = name
        self._per_client_setting = per_client
        self._total_setting = total
        self._lock = threading.Lock()
        self._by_client: Counter[str] = Counter()
        self.in_use = 0

    @property
    def per_client(self) -> int:
        return int(getattr(settings, self._per_client_setting) or 0)

    @property
    def total(self) -> int:
        return int(getattr(settings, self._total_setting) or 0)

    def acquire(self, client: str) -> None:
        with self._lock:
            if self.total and self.in_use >= self.total:
                raise refuse(f"{self.name}_total", f"The herder is at its limit of {self.total} "
                                                   f"{self.name}s; try again later.")
            if self.per_client and self._by_client[client] >= self.per_client:
                raise refuse(f"{self.name}_per_client", f"At most {self.per_client} {self.name}s "
                                                        f"per client at once.")
            self._by_client[client] += 1
            self.in_use += 1

    def release(self, client: str) -> None:
        with self._lock:
            self.in_use -= 1
            self._by_client[client] -= 1
            if self._by_client[client] <= 0:
                del self._by_client[client]

    @contextmanager
    def hold(self, client: str):
        self.acquire(client)
        try:
            yield
        finally:
            self.release(client)

    def snapshot(self) -> dict:
        return {"in_use": self.in_use, "limit": self.total, "per_client": self.per_client,
                "clients": len(self._by_client)}
