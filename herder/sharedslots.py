"""Per-client limits across herder processes (workers, replicas), through Redis.

Every process counts its own slots (herder.admission.Slots: runs, sockets...)
and, with REDIS_URL, tells the others what each client holds: every
HERDER_SLOTS_SHARE_INTERVAL seconds a thread writes this process's per-client
counts into one Redis hash per kind of slot (a field per process, stamped with
the time) and reads the other processes' fields back into Slots.elsewhere. A
client then has room only when what it holds here and elsewhere together is
under its limit, so a client whose connections land on several workers holds
no more than its limit in all.

Nothing of it is on a request's path: admission reads the last counts it got.
The price is staleness: a burst spread over several processes faster than
one interval may pass the limit by what it took meanwhile, until the next
exchange. A process that dies stops refreshing its field; the others ignore
it after three intervals and remove it.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
import time

from django.conf import settings

from herder.admission import Slots, all_slots

logger = logging.getLogger(__name__)

_STALE_INTERVALS = 3


class SlotSharing:
    def __init__(self, redis_url: str, *, interval: float, instance: str) -> None:
        import redis  # channels-redis's dependency

        self.redis = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)
        self.interval = interval
        self.prefix = f"herder:{instance}:slots:"
        self.me = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def exchange(self, slots: list[Slots]) -> None:
        """Write this process's counts, read the others' (one round trip)."""
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            for one in slots:
                key = self.prefix + one.name
                pipe.hset(key, self.me, json.dumps({"t": now, "c": one.counts()}))
                pipe.expire(key, max(60, int(self.interval * 10)))
                pipe.hgetall(key)
            answers = pipe.execute()
        for one, fields in zip(slots, answers[2::3], strict=True):
            elsewhere: dict[str, int] = {}
            stale = []
            for field, value in fields.items():
                field = field.decode()
                if field == self.me:
                    continue
                entry = json.loads(value)
                if now - entry["t"] > _STALE_INTERVALS * self.interval:
                    stale.append(field)
                    continue
                for client, count in entry["c"].items():
                    elsewhere[client] = elsewhere.get(client, 0) + count
            one.set_elsewhere(elsewhere)
            if stale:
                self.redis.hdel(self.prefix + one.name, *stale)

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.exchange(all_slots())
            except Exception:
                # Redis away: each process goes on with what it last knew.
                logger.warning("slot counts could not be shared", exc_info=logger.isEnabledFor(logging.DEBUG))
            self._stop.wait(self.interval)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="herder-slot-sharing", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            for one in all_slots():
                self.redis.hdel(self.prefix + one.name, self.me)
        except Exception:
            pass  # the others drop it after three intervals


def start_sharing() -> SlotSharing | None:
    """Share this process's counts when processes can share Redis."""
    if not settings.REDIS_URL or not settings.HERDER_SLOTS_SHARE_INTERVAL:
        return None
    from herder.runtime import deployment_instance

    sharing = SlotSharing(
        settings.REDIS_URL, interval=settings.HERDER_SLOTS_SHARE_INTERVAL, instance=deployment_instance()
    )
    sharing.start()
    return sharing
