"""Who a client is, and whether it may start one more thing.

Views and consumers ask here once, in one line, and get a typed error
(`TooManyRequests`, 429 with Retry-After) that the one handler renders:

    client = client_of(request.scope)               # or a consumer's self.scope
    rate_check("golem-spawn", client, settings.HERDER_GOLEM_SPAWN_RATE)
    with slots["minion"].hold(client):              # concurrent work, per client and in total
        ...
    await minion_slots.wait(client)                  # the same, waiting in a bounded queue

Behind Django (a WSGIRequest in tests, an ASGIRequest when served) use
`request_scope(request)` for the scope.

Rates are counted in Django's cache (Redis when REDIS_URL is set, so every
process shares them; else this process's memory). Slots count work in progress
in this process. Every refusal is remembered for /pressure and the metrics.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import re
import threading
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field

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


def from_trusted_proxy(scope: dict) -> bool:
    """Whether the peer is one of HERDER_TRUSTED_PROXIES, whose forwarding
    headers (X-Forwarded-For, -Proto, X-Request-Id) are believed."""
    if not settings.HERDER_TRUSTED_PROXIES:
        return False  # the usual case, on every request: no address parsed
    return _trusted((scope.get("client") or ("", 0))[0] or "")


def client_address(scope: dict) -> str:
    """The client's address: the peer, or, when the peer is a trusted proxy,
    the right-most `X-Forwarded-For` hop that is not a trusted proxy itself
    (a client can prepend anything; only what our proxies appended counts)."""
    peer = (scope.get("client") or ("unknown", 0))[0] or "unknown"
    if not from_trusted_proxy(scope):
        return peer
    forwarded = [value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"x-forwarded-for"]
    hops = [hop.strip() for line in forwarded for hop in line.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop):
            return hop
    return hops[0] if hops else peer


def request_scope(request) -> dict:
    """The ASGI scope of a Django request, or one made from a WSGI request's
    META (the test client's): enough for client_address and client_of."""
    scope = getattr(request, "scope", None)
    if scope is not None:
        return scope
    meta = request.META
    headers = [
        (name, meta[key].encode("latin-1"))
        for name, key in ((b"x-forwarded-for", "HTTP_X_FORWARDED_FOR"), (b"authorization", "HTTP_AUTHORIZATION"))
        if meta.get(key)
    ]
    return {
        "type": "http",
        "client": (meta.get("REMOTE_ADDR") or "unknown", 0),
        "headers": headers,
        "query_string": meta.get("QUERY_STRING", "").encode("latin-1"),
    }


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
        headers = (
            [(b"x-forwarded-for", meta["HTTP_X_FORWARDED_FOR"].encode("latin-1"))]
            if "HTTP_X_FORWARDED_FOR" in meta
            else []
        )
        scope = {"client": (meta.get("REMOTE_ADDR") or "unknown", 0), "headers": headers}
    return client_of(scope)


# --- Refusals, remembered for /pressure and the metrics ----------------------

_refusals_lock = threading.Lock()
_refusals: deque[tuple[float, str]] = deque(maxlen=1000)
refusal_totals: Counter[str] = Counter()


def note_refusal(reason: str) -> None:
    """Remember a refusal (a 429, or a 413 from the body caps) for /pressure."""
    with _refusals_lock:
        _refusals.append((time.time(), reason))
        refusal_totals[reason] += 1
    count_refusal(reason)  # herder_refused_total


def refuse(reason: str, detail: str, *, wait: float = 1) -> TooManyRequests:
    """Record a refusal for load and return the error to raise."""
    note_refusal(reason)
    return TooManyRequests(detail, wait=wait)


def recent_refusals(seconds: float = 60) -> dict[str, int]:
    """Refusals of the last `seconds`, by reason."""
    since = time.time() - seconds
    with _refusals_lock:
        return dict(Counter(reason for at, reason in _refusals if at >= since))


def refusals_since(seconds: float) -> list[tuple[float, str]]:
    """(time, reason) of this process's refusals of the last `seconds` (the
    admin's dashboard draws them over time)."""
    since = time.time() - seconds
    with _refusals_lock:
        return [(at, reason) for at, reason in _refusals if at >= since]


# --- Rates --------------------------------------------------------------------


def _rate_key(bucket: str, client: str, rate: Rate) -> tuple[str, float]:
    """The cache key of the current window, and seconds until it ends."""
    now = time.time()
    window = int(now // rate.seconds)
    return f"herder:rate:{bucket}:{client}:{window}", (window + 1) * rate.seconds - now


def _parsed(rate: Rate | str | None) -> Rate | None:
    return Rate.parse(rate) if isinstance(rate, str) else rate


def _refuse_rate(bucket: str, rate: Rate, wait: float) -> TooManyRequests:
    return refuse(bucket, f"Too many requests of this kind; at most {rate.count} per {rate.seconds} s.", wait=wait)


def rate_count(bucket: str, client: str, rate: Rate | str | None) -> int:
    """Count one event of `client` in `bucket`'s current window; the count so far."""
    rate = _parsed(rate)
    if rate is None:
        return 0
    key, _ = _rate_key(bucket, client, rate)
    # add() then incr() is atomic on Redis and under the local cache's lock.
    cache.add(key, 0, timeout=rate.seconds + 1)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=rate.seconds + 1)
        return 1


def rate_check(bucket: str, client: str, rate: Rate | str | None) -> None:
    """Count one event of `client` in `bucket`; raise 429 past `rate` in its
    current window (fixed windows: cheap and shared through the cache)."""
    rate = _parsed(rate)
    if rate is not None and rate_count(bucket, client, rate) > rate.count:
        raise _refuse_rate(bucket, rate, _rate_key(bucket, client, rate)[1])


def rate_spent(bucket: str, client: str, rate: Rate | str | None) -> None:
    """Raise 429 when `client` already has `rate`'s count of events in
    `bucket`'s window, counting nothing: for events counted only when they
    fail (wrong passwords), checked before the attempt is even judged."""
    rate = _parsed(rate)
    if rate is None:
        return
    key, wait = _rate_key(bucket, client, rate)
    if (cache.get(key) or 0) >= rate.count:
        raise _refuse_rate(bucket, rate, wait)


# --- Slots: work in progress, per client and in total ------------------------


@dataclass(eq=False)
class _Waiter:
    client: str
    seq: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future = field(repr=False)


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


_registry: list[Slots] = []


def all_slots() -> list[Slots]:
    """Every Slots of this process (shared with the others: herder/sharedslots.py)."""
    return list(_registry)


class Slots:
    """Counts work in progress in this process, per client and in total.

    `hold(client)` / `acquire` refuse at once (429) past either limit; `wait`
    (async) may instead wait in a bounded queue, costing no thread, until a
    slot frees or its time is up. A limit of 0 or None is no limit. Limits
    are setting names, read on every call, so tests and settings changes
    apply without restarting.

    Queue: at most `queue` waiters, and per client at most as many as it may
    run, so one client cannot fill it. A freed slot goes to the waiter whose
    client runs the fewest, the oldest first among equals (FIFO, fair across
    clients); a slot is handed over under the lock, so a newcomer never takes
    it from a waiter. A client holding a token ("account:...") has the
    `per_account` limit when one is set.
    """

    def __init__(
        self,
        name: str,
        *,
        per_client: str,
        total: str,
        per_account: str | None = None,
        queue: str | None = None,
        queue_wait: str | None = None,
    ) -> None:
        self.name = name
        self._per_client_setting = per_client
        self._per_account_setting = per_account
        self._total_setting = total
        self._queue_setting = queue
        self._queue_wait_setting = queue_wait
        self._lock = threading.Lock()
        self._by_client: Counter[str] = Counter()
        self.in_use = 0
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()
        # How long a slot is held, smoothed: the Retry-After hint.
        self.typical_hold = 1.0
        # What clients hold in the other herder processes (herder/sharedslots.py).
        self._elsewhere: dict[str, int] = {}
        _registry.append(self)

    def _setting(self, name: str | None) -> float:
        return (getattr(settings, name, 0) or 0) if name else 0

    @property
    def per_client(self) -> int:
        return int(self._setting(self._per_client_setting))

    @property
    def per_account(self) -> int:
        return int(self._setting(self._per_account_setting)) or self.per_client

    @property
    def total(self) -> int:
        return int(self._setting(self._total_setting))

    @property
    def queue(self) -> int:
        return int(self._setting(self._queue_setting))

    @property
    def queue_wait(self) -> float:
        return float(self._setting(self._queue_wait_setting))

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def counts(self) -> dict[str, int]:
        """What each client holds in this process."""
        with self._lock:
            return dict(self._by_client)

    def set_elsewhere(self, counts: dict[str, int]) -> None:
        """What clients hold in the other processes; waiters that now fit are let in."""
        with self._lock:
            self._elsewhere = counts
            handed = self._hand_on()
        self._wake(handed)

    def held_by(self, client: str) -> int:
        """Slots `client` holds now."""
        with self._lock:
            return self._by_client[client]

    def limit_of(self, client: str) -> int:
        return self.per_account if client.startswith("account:") else self.per_client

    # Under self._lock:
    def _total_room(self) -> bool:
        return not self.total or self.in_use < self.total

    def _client_room(self, client: str) -> bool:
        limit = self.limit_of(client)
        return not limit or self._by_client[client] + self._elsewhere.get(client, 0) < limit

    def _take(self, client: str) -> None:
        self._by_client[client] += 1
        self.in_use += 1

    def _retry_hint(self, ahead: int = 0) -> float:
        # About when one more slot frees for this client.
        return self.typical_hold * (1 + ahead / max(self.total, 1))

    def _refuse_total(self, reason: str) -> TooManyRequests:
        return refuse(
            reason,
            f"The herder is at its limit of {self.total} {self.name}s at once "
            f"and {self.queue} waiting; try again later.",
            wait=self._retry_hint(len(self._waiting)),
        )

    def _refuse_client(self, client: str) -> TooManyRequests:
        limit = self.limit_of(client)
        return refuse(
            f"{self.name}_per_client",
            f"At most {limit} {self.name}s per client at once" + (f", and {limit} waiting." if self.queue else "."),
            wait=self._retry_hint(),
        )

    def acquire(self, client: str) -> None:
        with self._lock:
            refusal = self._no_room(client)
            if refusal is not None:
                raise refusal
            self._take(client)

    def _no_room(self, client: str) -> TooManyRequests | None:
        """Under the lock: the refusal when no slot is free for `client` now."""
        if not self._total_room():
            return self._refuse_total(f"{self.name}_total")
        if not self._client_room(client):
            return self._refuse_client(client)
        return None

    def release(self, client: str, *, held: float | None = None) -> None:
        """Give a slot back (`held`: for how long, seconds) and hand it on to a waiter."""
        with self._lock:
            self.in_use -= 1
            self._by_client[client] -= 1
            if self._by_client[client] <= 0:
                del self._by_client[client]
            if held is not None:
                self.typical_hold = 0.8 * self.typical_hold + 0.2 * max(held, 0.05)
            handed = self._hand_on()
        self._wake(handed)

    def _wake(self, handed: list[_Waiter]) -> None:
        for waiter in handed:
            try:
                waiter.loop.call_soon_threadsafe(_wake, waiter.future)
            except RuntimeError:  # its event loop is closed: nobody will use the slot
                self.release(waiter.client)

    def _hand_on(self) -> list[_Waiter]:
        handed = []
        while self._waiting and self._total_room():
            eligible = [w for w in self._waiting if self._client_room(w.client)]
            if not eligible:
                break
            chosen = min(eligible, key=lambda w: (self._by_client[w.client], w.seq))
            self._waiting.remove(chosen)
            self._take(chosen.client)
            handed.append(chosen)
        return handed

    def _refusal(self, client: str) -> TooManyRequests | None:
        """Under the lock, when `client` finds no free slot: the refusal, or
        None when it may wait."""
        if not self.queue:
            return (
                self._refuse_total(f"{self.name}_total") if self._client_room(client) else self._refuse_client(client)
            )
        # A client waits for at most as many slots as it may hold.
        limit = self.limit_of(client)
        if limit and sum(1 for w in self._waiting if w.client == client) >= limit:
            return self._refuse_client(client)
        if len(self._waiting) >= self.queue:
            return self._refuse_total(f"{self.name}_queue_full")
        return None

    def refusal_now(self, client: str, *, may_wait: bool) -> TooManyRequests | None:
        """The 429 that `acquire` (or, `may_wait`, `wait`) would raise for
        `client` at once, else None; takes nothing (herder/door.py)."""
        with self._lock:
            if self._total_room() and self._client_room(client):
                return None
            return self._refusal(client) if may_wait else self._no_room(client)

    async def wait(self, client: str) -> None:
        """Take a slot, waiting for one in the queue when there is room in it.

        Raises TooManyRequests (429, Retry-After) when the client already has
        its limit running and waiting, when the queue is full, or when no slot
        freed within `queue_wait` seconds. Cancelled while waiting, it leaves
        the queue (and gives back a slot handed to it meanwhile)."""
        with self._lock:
            if self._total_room() and self._client_room(client):
                self._take(client)
                return
            refusal = self._refusal(client)
            if refusal is not None:
                raise refusal
            loop = asyncio.get_running_loop()
            waiter = _Waiter(client, next(self._seq), loop, loop.create_future())
            self._waiting.append(waiter)
        try:
            # Not wait_for: it would swallow a cancellation arriving together
            # with the slot, and run for a client that has gone.
            async with asyncio.timeout(self.queue_wait or None):
                await waiter.future
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            with self._lock:
                handed = waiter not in self._waiting
                if not handed:
                    self._waiting.remove(waiter)
            if handed:
                self.release(client)
            if isinstance(exc, asyncio.TimeoutError):
                raise refuse(
                    f"{self.name}_queue_timeout",
                    f"No {self.name} slot freed within {self.queue_wait:g} s; try again later.",
                    wait=self._retry_hint(len(self._waiting)),
                ) from None
            raise

    async def ticket(self, client: str) -> Ticket:
        """`wait(client)`, then a Ticket for the slot: one release only, and
        it can be handed from the layer that waited to the work that uses it."""
        await self.wait(client)
        return Ticket(self, client)

    @contextmanager
    def hold(self, client: str):
        self.acquire(client)
        try:
            yield
        finally:
            self.release(client)

    def snapshot(self) -> dict:
        return {
            "in_use": self.in_use,
            "limit": self.total,
            "per_client": self.per_client,
            "per_account": self.per_account,
            "clients": len(self._by_client),
            "waiting": len(self._waiting),
            "queue": self.queue,
            "queue_wait": self.queue_wait,
        }


class Ticket:
    """One slot taken by `Slots.ticket`. Whoever uses the slot `take()`s the
    ticket and releases it when done; the one that waited releases it with
    `release_unless_taken()` when nobody took it (bad input, client gone)."""

    def __init__(self, slots: Slots, client: str) -> None:
        self.slots, self.client = slots, client
        self.taken = self.released = False
        self._lock = threading.Lock()

    def take(self) -> Ticket:
        self.taken = True
        return self

    def release(self, *, held: float | None = None) -> None:
        with self._lock:
            if self.released:
                return
            self.released = True
        self.slots.release(self.client, held=held)

    def release_unless_taken(self) -> None:
        if not self.taken:
            self.release()
