"""Names and messages of golem/minion pairing on the channel layer.

Who is where:
- a golem's control socket is found through `GolemPresence` (the database, shared
  by every herder process); minions announce themselves on its channel;
- a waiting minion listens on `waiting_group(webstrate)` for a golem arriving;
- a minion listens on `minion_group(webstrate, id)` for the golem's connect-to.

Once paired, the two sockets send `relay.frame` messages straight to each
other's channel, in order, through one sender task per socket (`Outbox`). When
the peer socket lives in the same process the message is handed to it
directly: no channel layer, no serialisation, no extra task hop.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer

logger = logging.getLogger(__name__)
# Most messages one channel message carries to a peer in another process.
_BATCH = 64
_BATCH_BYTES = 256 * 1024


def _size(message: dict) -> int:
    return len(message.get("bytes") or message.get("text") or "")


# Bytes (characters of text frames) queued in every Outbox of this process, and
# the most there ever were (tests and /pressure read them).
_buffered = {"now": 0, "peak": 0}


def buffered_bytes() -> int:
    return _buffered["now"]


def buffered_peak(*, reset: bool = False) -> int:
    peak = _buffered["peak"]
    if reset:
        _buffered["peak"] = _buffered["now"]
    return peak


def _count(size: int) -> None:
    _buffered["now"] += size
    if _buffered["now"] > _buffered["peak"]:
        _buffered["peak"] = _buffered["now"]


# Channel name -> dispatch of a pairing socket of this process.
local_sockets: dict[str, Callable[[dict], Awaitable[None]]] = {}

# Event frames, with the original herder's keys.


def event(name: str, **fields: str) -> str:
    return json.dumps({"Event": name, **fields})


def _digest(webstrate: str) -> str:
    # Group names are limited to 100 ASCII characters; webstrate ids may have 128.
    return hashlib.sha256(webstrate.encode()).hexdigest()[:32]


def waiting_group(webstrate: str) -> str:
    return f"golems.waiting.{_digest(webstrate)}"


def minion_group(webstrate: str, minion_id: str) -> str:
    return f"golems.minion.{_digest(webstrate)}.{minion_id}"


def is_minion_id(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


_CONNECT_TO = re.compile(r"/golem/v1/connect-to/([^/]+)/([^/]+)")


async def minion_process(scope: dict) -> str | None:
    """For a golem's socket to an ad-hoc minion, the channel-layer client prefix
    of the process holding the minion's socket (herder/handoff.py); None for
    any other socket, or a minion not found."""
    found = _CONNECT_TO.fullmatch(scope["path"])
    if found is None or not is_minion_id(found[2]):
        return None
    from channels.layers import get_channel_layer

    from herder.channel_layer import client_of

    members = await get_channel_layer().group_members(minion_group(found[1], found[2]))
    processes = {client_of(member) for member in members}
    return processes.pop() if len(processes) == 1 else None


async def send_patiently(layer, channel: str, message: dict, *, timeout: float = 30.0) -> bool:
    """Send, waiting while the peer's channel is full. False when it stayed full
    for `timeout` seconds (the peer is stuck or gone)."""
    delay = 0.001
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await layer.send(channel, message)
            return True
        except ChannelFull:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)


class Outbox:
    """Frames for the peer, sent in order by one task so that the consumer keeps
    reading its own channel while the peer's channel is full.

    Bounded in frames (`size`) and in bytes (`max_bytes`; a single larger frame
    passes when nothing else is queued): client bytes held for a slow or absent
    peer never exceed that, whatever the client sends."""

    def __init__(self, layer, *, size: int, max_bytes: int, on_fail) -> None:
        self.layer = layer
        self.peer: str | None = None
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=size)
        self.max_bytes = max_bytes
        self.bytes = 0
        self._room = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task | None = None
        # Awaited once when the peer's channel stayed full: frames are never dropped silently.
        self._on_fail = on_fail

    def start(self, peer: str) -> None:
        self.peer = peer
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    def _fits(self, size: int) -> bool:
        return not self.bytes or self.bytes + size <= self.max_bytes

    def _added(self, size: int) -> None:
        self.bytes += size
        _count(size)

    def _released(self, size: int) -> None:
        if size:
            self.bytes -= size
            _count(-size)
            self._room.set()

    async def put(self, message: dict) -> None:
        """Queue a message, waiting while the queue is full (the peer is slow).
        Once the outbox is cancelled or closed, messages are dropped."""
        size = _size(message)
        while not self._closed and not self._fits(size):
            self._room.clear()
            await self._room.wait()
        if self._closed:
            return
        self._added(size)
        try:
            await self._queue.put(message)
        except BaseException:
            self._released(size)
            raise
        if self._closed:  # cancelled while waiting for a place
            self._drop()

    def put_nowait(self, message: dict) -> bool:
        """Queue a message; False when the queue is full (in frames or bytes)."""
        size = _size(message)
        if self._closed:
            return True  # dropped: the outbox is done
        if not self._fits(size):
            return False
        try:
            self._queue.put_nowait(message)
        except asyncio.QueueFull:
            return False
        self._added(size)
        return True

    def _drop(self) -> None:
        """Forget what is queued: its bytes no longer count."""
        while not self._queue.empty():
            message = self._queue.get_nowait()
            self._released(_size(message) if message else 0)

    async def _run(self) -> None:
        # A message's bytes count until it is delivered, not only while queued.
        while True:
            message = await self._queue.get()
            if message is None:
                return
            deliver = local_sockets.get(self.peer)
            if deliver is not None:
                try:
                    await deliver(message)
                except Exception:
                    # The peer's socket is closing; its own loops say so.
                    logger.debug("local peer %s refused a message", self.peer, exc_info=True)
                finally:
                    self._released(_size(message))
                continue
            message, size, done = self._batch(message)
            # Every socket of an in-memory layer is in this process: a peer not
            # found has left, and its channel would keep these until they expire.
            gone = isinstance(self.layer, InMemoryChannelLayer)
            try:
                if not gone and not await send_patiently(self.layer, self.peer, message):
                    await self._on_fail()
                    return
            finally:
                self._released(size)
            if done:
                return

    def _batch(self, first: dict) -> tuple[dict, int, bool]:
        """`first` and whatever else is queued already, as one channel message:
        one round trip to Redis for a burst of frames instead of one each.
        Also says its size and whether the end of the queue (None) was reached."""
        messages, size = [first], _size(first)
        while len(messages) < _BATCH and size < _BATCH_BYTES:
            try:
                message = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            if message is None:
                return self._wrap(messages), size, True
            messages.append(message)
            size += _size(message)
        return self._wrap(messages), size, False

    @staticmethod
    def _wrap(messages: list[dict]) -> dict:
        return messages[0] if len(messages) == 1 else {"type": "relay.batch", "messages": messages}

    def cancel(self) -> None:
        """Stop at once; whatever is queued is dropped (the peer is gone)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._drop()
        self._room.set()

    async def close(self, *, flush: float = 5.0) -> None:
        """Send what is queued (for at most `flush` seconds), then stop."""
        if self._task is None:
            self.cancel()
            return
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            pass
        try:
            await asyncio.wait_for(asyncio.shield(self._task), flush)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            self._task.cancel()
        self.cancel()
