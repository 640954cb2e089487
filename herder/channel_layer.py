"""The channel layer of a herder with Redis: channels-redis, with three shortcuts.

channels-redis sends every message through Redis, even to a channel of the very
process sending it, and spends eight Redis commands on each (four to send, four
to receive). A frame between two herder workers took 1.5-2.5 ms each way. So:

1. A message to a channel of this process (its `client_prefix`) goes straight
   into the layer's receive buffer: no serialisation, no Redis. Capacity holds:
   a full channel raises ChannelFull, as channels-redis would once its key held
   `capacity` messages (its own buffer would silently drop the oldest instead).
2. A message to a channel of another process of this host goes over a Unix
   socket that every process listens on (Linux's abstract namespace, named
   after its client prefix: nothing on disk to clean up, gone with the process,
   invisible from containers with a network namespace of their own), one write
   a message and no answer. Capacity holds per channel: a receiver whose
   channel reaches `capacity` tells the sender ("full"), whose sends to it
   raise ChannelFull until told there is room again (at half); what was
   already on its way is kept (order is never broken), so a channel overshoots
   by at most what one sender had in flight. Only processes of the same user
   talk over it, each end checking the other (SO_PEERCRED). A process that is
   not there (another host, a dead worker) refuses the connection at once and
   Redis is used.
3. Through Redis, a send is one Lua script instead of four commands.

Groups stay in Redis (membership is shared by every process, with its expiry
and renewal); a group message to a member of this process is delivered
locally. The receive loop waits out a Redis outage instead of ending every
consumer of the process, so pairs within one process go on relaying.

Not chosen: channels-redis' pub/sub layer (one command a message, but no
capacity, so no backpressure between a fast and a slow socket, and a message
to a process not subscribed at that moment is lost silently). On uvicorn, a
golem's socket to a minion of another process of this host is handed to that
process before its handshake (herder/handoff.py), so pairs rarely cross the
link; Daphne's and other hosts' still do.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import os
import socket
import struct
import time

import msgpack
from channels.exceptions import ChannelFull
from channels_redis.core import RedisChannelLayer
from redis import exceptions as redis_errors

logger = logging.getLogger(__name__)

_SEND_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], 0, tonumber(ARGV[3]))
if redis.call('ZCOUNT', KEYS[1], '-inf', '+inf') >= tonumber(ARGV[5]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""
_SEND_SHA = hashlib.sha1(_SEND_LUA.encode()).hexdigest()

# channels-redis' group_send, for the members of other processes.
_GROUP_SEND_LUA = """
local over_capacity = 0
local current_time = ARGV[#ARGV - 1]
local expiry = ARGV[#ARGV]
for i=1,#KEYS do
    if redis.call('ZCOUNT', KEYS[i], '-inf', '+inf') < tonumber(ARGV[i + #KEYS]) then
        redis.call('ZADD', KEYS[i], current_time, ARGV[i])
        redis.call('EXPIRE', KEYS[i], expiry)
    else
        over_capacity = over_capacity + 1
    end
end
return over_capacity
"""

_HEADER = struct.Struct(">I")
# Redis' own limit on a value: the link carries whatever Redis could, and a
# length past it is not a herder talking.
_MAX_LINK_MESSAGE = 512 * 1024 * 1024
# Bytes written to a link and not yet taken by its peer, past which sends wait.
_LINK_HIGH_WATER = 1024 * 1024
# A peer process that takes nothing for this long is stopped or stuck: its
# channels count as full (the sender's own patience decides what happens next).
_LINK_PATIENCE = 10.0
# Prefixes found to be elsewhere (another host), remembered up to this many.
_ELSEWHERE_MAX = 4096
# Messages taken from Redis in one command while they keep coming.
_READ_BATCH = 64
_CREDENTIALS = struct.Struct("3i")  # pid, uid, gid
_REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)


def link_address(client_prefix: str) -> str:
    """The abstract Unix socket a process with this client prefix listens on."""
    return f"\0herder-channels-{client_prefix}"


def peer_uid(sock) -> int:
    """The uid of the process at the other end of a connected Unix socket."""
    _, uid, _ = _CREDENTIALS.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CREDENTIALS.size))
    return uid


def listening_on(name: str, kind: int) -> socket.socket | None:
    """A Unix socket listening on an abstract name; None when it is taken."""
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(name)
    except OSError:
        sock.close()
        return None
    sock.listen(128)
    return sock


def client_of(channel: str) -> str | None:
    """The client prefix of a process-specific channel (`specific.<prefix>!<id>`)."""
    head, bang, _ = channel.partition("!")
    if not bang:
        return None
    return head.rpartition(".")[2]


class _LinkDown(Exception):
    """The peer process's socket closed or is not there: use Redis."""


class _Link(asyncio.Protocol):
    """The sending end of a connection to another process of this host. Its
    peer writes back only notices: `F<channel>\n` (full) and `R<channel>\n`
    (room again)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.down = False
        self.full: set[str] = set()
        self._notices = b""
        self._writable: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=_LINK_HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        *notices, self._notices = (self._notices + data).split(b"\n")
        for notice in notices:
            channel = notice[1:].decode("utf8", "replace")
            if notice[:1] == b"F":
                self.full.add(channel)
            else:
                self.full.discard(channel)

    def connection_lost(self, exc) -> None:
        self.down = True
        self.resume_writing()

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def close(self) -> None:
        self.down = True
        if self.transport is not None:
            self.transport.close()

    async def send(self, channel: str, message: dict) -> bool:
        """False when the channel is full. Raises _LinkDown."""
        if self.down:
            raise _LinkDown()
        if channel in self.full:
            return False
        if self._writable is not None:
            # The peer takes nothing: stopped or swamped.
            try:
                await asyncio.wait_for(asyncio.shield(self._writable), _LINK_PATIENCE)
            except asyncio.TimeoutError:
                return False
            if self.down:
                raise _LinkDown()
        data = msgpack.packb([channel, message], use_bin_type=True)
        self.transport.write(_HEADER.pack(len(data)) + data)
        return True


class _LinkServer(asyncio.Protocol):
    """The receiving end of a connection from another process of this host."""

    def __init__(self, layer: HerderChannelLayer) -> None:
        self.layer = layer
        self.transport: asyncio.Transport | None = None
        self._data = bytearray()
        self._full: set[str] = set()  # channels this sender was told are full

    def connection_made(self, transport) -> None:
        uid = peer_uid(transport.get_extra_info("socket"))
        if uid != os.getuid():
            logger.warning("refused a channel-layer link from uid %d", uid)
            transport.abort()
            return
        self.transport = transport
        self.layer._accepted.add(self)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self._data += data
        start = 0
        try:
            while len(self._data) - start >= _HEADER.size:
                (size,) = _HEADER.unpack_from(self._data, start)
                if size > _MAX_LINK_MESSAGE:
                    raise ValueError(f"a channel-layer link message of {size} bytes")
                end = start + _HEADER.size + size
                if len(self._data) < end:
                    break
                channel, message = msgpack.unpackb(self._data[start + _HEADER.size : end], raw=False)
                start = end
                if isinstance(channel, str) and isinstance(message, dict) and self.layer._is_local(channel):
                    # Never refused: what the sender wrote before it heard "full" is kept, in order.
                    if not self.layer._deliver(channel, message, overflow=self) and channel not in self._full:
                        self._full.add(channel)
                        self.transport.write(b"F" + channel.encode("utf8") + b"\n")
        except (ValueError, TypeError, msgpack.UnpackException) as error:
            logger.warning("closed a channel-layer link: %s", error)
            self.transport.abort()
            self.transport = None
            return
        del self._data[:start]

    def room(self, channel: str) -> None:
        self._full.discard(channel)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"R" + channel.encode("utf8") + b"\n")

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.layer._accepted.discard(self)


class HerderChannelLayer(RedisChannelLayer):
    """RedisChannelLayer, delivering within the process and within the host
    without Redis (see the module's docstring). `link=False` sends every
    message of another process through Redis (as across hosts)."""

    def __init__(self, *args, link: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.link = link
        # The loop receiving (channels-redis allows one at a time), its link
        # server and its readers of Redis, one per process-specific key.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._server_sock: socket.socket | None = None
        self._accepted: set[_LinkServer] = set()
        self._readers: dict[str, asyncio.Task] = {}
        # Links and connections under way, per loop (a link belongs to one).
        self._loop_links: dict[asyncio.AbstractEventLoop, tuple[dict, dict]] = {}
        self._elsewhere: set[str] = set()
        self._receiving: collections.Counter[str] = collections.Counter()
        # Bounded by _deliver and _read rather than by the queue, so that what
        # a link had on its way when the channel filled up is kept.
        self.receive_buffer = collections.defaultdict(asyncio.Queue)
        # Channel -> the links told it is full, to be told when there is room.
        self._told: dict[str, set[_LinkServer]] = {}
        self._idle: set[str] = set()
        self._swept = time.monotonic()
        self._redis_down_logged = 0.0

    # --- Within the process ------------------------------------------------

    def _is_local(self, channel: str) -> bool:
        return client_of(channel) == self.client_prefix

    def _deliver(self, channel: str, message: dict, *, overflow: _LinkServer | None = None) -> bool:
        """Into this process's buffer for `channel`; False when it is full (then
        nothing is delivered, unless `overflow`: a link whose sender is told)."""
        self._sweep()
        queue = self.receive_buffer[channel]
        if queue.qsize() < self.get_capacity(channel):
            queue.put_nowait(message)
            return True
        if overflow is not None:
            queue.put_nowait(message)
            self._told.setdefault(channel, set()).add(overflow)
        return False

    def _sweep(self) -> None:
        """Forget what waits for channels nobody received from for a whole
        expiry period (their consumers are gone), as Redis expires them."""
        now = time.monotonic()
        if now - self._swept < self.expiry:
            return
        self._swept = now
        idle = {
            channel
            for channel, queue in self.receive_buffer.items()
            if not queue.empty() and not self._receiving[channel] and self._is_local(channel)
        }
        for channel in idle & self._idle:
            self.receive_buffer.pop(channel, None)
            for link in self._told.pop(channel, ()):
                link.room(channel)
        self._idle = idle

    async def receive(self, channel: str) -> dict:
        """The next message of `channel`. A process's specific channels are fed
        by one reader of Redis per key (`_read`), the link and local senders;
        channels-redis' own receive, which reads Redis in whichever receive
        call holds its lock, would not notice a message put in its buffer."""
        if "!" not in channel:
            return await super().receive(channel)
        assert self.require_valid_channel_name(channel)
        real = self.non_local_name(channel)
        assert real.endswith(self.client_prefix + "!"), "Wrong client prefix"
        await self._attach(real)
        queue = self.receive_buffer[channel]
        self._receiving[channel] += 1
        try:
            message = await queue.get()
        except asyncio.CancelledError:
            # As channels-redis: a receiver cancelled is a consumer gone.
            if self._receiving[channel] == 1 and self.receive_buffer.get(channel) is queue:
                del self.receive_buffer[channel]
                # Its senders may write again (and fill the new buffer): they forget it.
                for link in self._told.pop(channel, ()):
                    link.room(channel)
            raise
        finally:
            self._receiving[channel] -= 1
            if not self._receiving[channel]:
                del self._receiving[channel]
        if channel in self._told and queue.qsize() <= self.get_capacity(channel) // 2:
            for link in self._told.pop(channel):
                link.room(channel)
        if queue.empty() and not self._receiving[channel] and self.receive_buffer.get(channel) is queue:
            del self.receive_buffer[channel]
        return message

    async def new_channel(self, prefix: str = "specific") -> str:
        channel = await super().new_channel(prefix)
        # Listening before the name is handed out: a peer may send at once.
        await self._attach(self.non_local_name(channel))
        return channel

    async def send(self, channel: str, message: dict) -> None:
        assert isinstance(message, dict), "message is not a dict"
        assert self.require_valid_channel_name(channel), "Channel name not valid"
        client = client_of(channel)
        loop = asyncio.get_running_loop()
        if client == self.client_prefix and loop is self._loop:
            if not self._deliver(channel, dict(message)):
                raise ChannelFull()
            return
        if client is not None and self.link and client not in self._elsewhere:
            # (A channel of this process sent to from another loop, another
            # thread, goes through the link too: the buffers are the loop's.)
            try:
                link = await self._link_to(client)
                if link is not None:
                    if not await link.send(channel, message):
                        raise ChannelFull()
                    return
            except _LinkDown:
                pass  # the process died meanwhile: Redis, where the message expires unread
        await self._send_redis(channel, message)

    async def _attach(self, real: str) -> None:
        """Receive on the running loop: listen on the link socket and read the
        process's Redis key `real` there."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None and self._loop.is_running():
                # As channels-redis: one loop receives (its buffers are that loop's).
                raise RuntimeError("Two event loops are trying to receive() on one channel layer at once!")
            self._detach()
            self._loop = loop
            await self._listen()
        reader = self._readers.get(real)
        if reader is None or reader.done():
            self._readers[real] = loop.create_task(self._read(real))

    def _detach(self) -> None:
        # The previous loop is gone (tests run one per test) or done receiving.
        if self._server is not None:
            if self._loop is asyncio.get_running_loop():
                self._server.close()
            self._server_sock.close()  # the loop that served it may be closed already
            self._server = self._server_sock = None
        if self._loop is not None and not self._loop.is_closed():
            for reader in self._readers.values():
                self._loop.call_soon_threadsafe(reader.cancel)
        self._readers.clear()
        self._loop = None

    async def _read(self, real: str) -> None:
        """Move what Redis holds for this process's key into the channels' buffers.

        channels-redis spends four commands on every message it receives (a
        script restoring a backup queue, the blocking pop, a copy into the
        backup, its removal), as any receive call may be cancelled mid-pop.
        This reader is the key's only one and lives as long as the loop
        receiving: one blocking pop of up to _READ_BATCH messages (BZMPOP; before
        Redis 7 a blocking pop when idle, batch pops while messages keep
        coming), nothing else. (A message popped as the process ends is lost;
        so are the channels it was for.)"""
        index = self.consistent_hash(real)
        key = self.prefix + real
        delay = 0.1
        ready: list = []
        batch = True  # BZMPOP (Redis 7): a blocking pop of whatever is there, in one command
        while True:
            try:
                connection = self.connection(index)
                if batch:
                    try:
                        popped = await connection.bzmpop(self.brpop_timeout, 1, [key], min=True, count=_READ_BATCH)
                        ready = popped[1] if popped else []
                    except redis_errors.ResponseError:
                        batch = False
                        continue
                else:
                    if ready:
                        ready = await connection.zpopmin(key, _READ_BATCH)
                    if not ready:
                        popped = await connection.bzpopmin(key, timeout=self.brpop_timeout)
                        ready = [popped[1:]] if popped else []
                delay = 0.1
            except _REDIS_DOWN as error:
                now = time.monotonic()
                if now - self._redis_down_logged > 30:
                    self._redis_down_logged = now
                    logger.warning("the channel layer cannot reach Redis (%s); retrying", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            for content, _ in ready:
                try:
                    message = self.deserialize(content)
                except Exception:
                    logger.exception("a message on %s could not be read", real)
                    continue
                channel = message.pop("__asgi_channel__", real)
                for each in channel if isinstance(channel, list) else [channel]:
                    queue = self.receive_buffer[each]
                    if queue.qsize() >= self.capacity:
                        # As channels-redis' bounded queue: a channel nobody reads drops its oldest.
                        queue.get_nowait()
                    queue.put_nowait(message)

    # --- Through Redis -------------------------------------------------------

    async def _send_redis(self, channel: str, message: dict) -> None:
        """channels-redis' send in one round trip."""
        assert "__asgi_channel__" not in message
        key_channel = channel
        if "!" in channel:
            message = dict(message.items())
            message["__asgi_channel__"] = channel
            key_channel = self.non_local_name(channel)
        index = self.consistent_hash(channel) if "!" in channel else next(self._send_index_generator)
        connection = self.connection(index)
        now = time.time()
        args = (
            1,
            self.prefix + key_channel,
            self.serialize(message),
            now,
            int(now) - int(self.expiry),
            int(self.expiry),
            self.get_capacity(channel),
        )
        try:
            sent = await connection.evalsha(_SEND_SHA, *args)
        except redis_errors.NoScriptError:
            sent = await connection.eval(_SEND_LUA, *args)
        if not sent:
            raise ChannelFull()

    async def group_send(self, group: str, message: dict) -> None:
        """channels-redis' group_send, delivering to members of this process
        directly. Full channels are skipped (and logged), as there."""
        assert self.require_valid_group_name(group), "Group name not valid"
        key = self._group_key(group)
        connection = self.connection(self.consistent_hash(group))
        pipe = connection.pipeline(transaction=False)
        pipe.zremrangebyscore(key, min=0, max=int(time.time()) - self.group_expiry)
        pipe.zrange(key, 0, -1)
        _, members = await pipe.execute()
        names = [member.decode("utf8") for member in members]
        others = []
        here = asyncio.get_running_loop() is self._loop
        for name in names:
            if here and self._is_local(name):
                if not self._deliver(name, dict(message)):
                    logger.info("channel %s of group %s is full", name, group)
            else:
                others.append(name)
        if others:
            await self._group_send_redis(group, others, message)

    async def group_members(self, group: str) -> list[str]:
        """The channels in a group now (expired memberships left out)."""
        assert self.require_valid_group_name(group), "Group name not valid"
        connection = self.connection(self.consistent_hash(group))
        members = await connection.zrangebyscore(self._group_key(group), int(time.time()) - self.group_expiry, "+inf")
        return [member.decode("utf8") for member in members]

    async def _group_send_redis(self, group: str, names: list[str], message: dict) -> None:
        by_connection, messages, capacities = self._map_channel_keys_to_connection(names, message)
        for index, keys in by_connection.items():
            connection = self.connection(index)
            pipe = connection.pipeline(transaction=False)
            for key in keys:
                pipe.zremrangebyscore(key, min=0, max=int(time.time()) - int(self.expiry))
            await pipe.execute()
            args = [messages[key] for key in keys] + [capacities[key] for key in keys] + [time.time(), self.expiry]
            over = await connection.eval(_GROUP_SEND_LUA, len(keys), *keys, *args)
            if over:
                logger.info("%s of %s channels over capacity in group %s", over, len(names), group)

    # --- Within the host ------------------------------------------------------

    async def _listen(self) -> None:
        """Listen on this process's link socket, on the receiving loop."""
        if not self.link:
            return
        sock = listening_on(link_address(self.client_prefix), socket.SOCK_STREAM)
        if sock is None:
            logger.warning("cannot listen for this host's other processes: they reach this one through Redis")
            return
        self._server_sock = sock
        self._server = await asyncio.get_running_loop().create_unix_server(lambda: _LinkServer(self), sock=sock)

    def _here(self) -> tuple[dict[str, _Link], dict[str, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        state = self._loop_links.get(loop)
        if state is None:
            for other in [other for other in self._loop_links if other.is_closed()]:
                del self._loop_links[other]
            state = self._loop_links[loop] = ({}, {})
        return state

    async def _link_to(self, client: str) -> _Link | None:
        """The open link to the process with that prefix, None when it is not on this host."""
        links, connecting = self._here()
        link = links.get(client)
        if link is not None and not link.down:
            return link
        pending = connecting.get(client)
        if pending is not None:
            return await asyncio.shield(pending)
        future = asyncio.get_running_loop().create_future()
        connecting[client] = future
        link = None
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                # Connected here, not by the loop: uvloop (libuv) takes socket
                # paths as C strings and so cannot name an abstract one. A Unix
                # socket connects at once, or is refused, or its backlog is full.
                sock.connect(link_address(client))
                # Anyone may bind an abstract name, e.g. a dead process's that
                # Redis still names: only a process of this user is told messages.
                if peer_uid(sock) != os.getuid():
                    raise ConnectionRefusedError(f"the link socket of {client} is not this user's")
            except OSError:
                sock.close()
                raise
            _, link = await asyncio.get_running_loop().create_unix_connection(_Link, sock=sock)
            links[client] = link
        except BlockingIOError:
            pass  # a process too busy to accept: Redis this time
        except OSError:
            # Not on this host (or gone): Redis, from now on.
            if len(self._elsewhere) >= _ELSEWHERE_MAX:
                self._elsewhere.clear()
            self._elsewhere.add(client)
            links.pop(client, None)
        finally:
            del connecting[client]
            future.set_result(link)
        return link

    async def close_links(self) -> None:
        links, _ = self._here()
        for link in list(links.values()):
            link.close()
        links.clear()
        if self._loop is asyncio.get_running_loop():
            for reader in self._readers.values():
                reader.cancel()
            for accepted in list(self._accepted):
                if accepted.transport is not None:
                    accepted.transport.close()
            self._detach()

    async def flush(self) -> None:
        await self.close_links()
        self.receive_buffer.clear()
        await super().flush()
