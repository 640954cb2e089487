"""Handing a WebSocket handshake to the herder process its peer is in.

A golem's socket to an ad-hoc minion (`/golem/v1/connect-to/<webstrate>/<id>`)
is accepted by whichever worker the kernel picks, often not the one holding the
minion's socket. Split that way, every relayed frame crossed two more processes
each way (2-3 x the round trip of a pair in one process). So before the
handshake is answered, the worker looks up which process the minion's channel
belongs to (its group in Redis) and, if that is another process of this host,
passes it the connection itself: the socket's descriptor (SCM_RIGHTS) with the
request's bytes, in one message over a Unix socket that every process listens
on (SOCK_SEQPACKET, in Linux's abstract namespace, named after its
channel-layer client prefix, as the layer's links are). The receiving process
serves the connection as if it had accepted it, so the pair relays within one
process.

Anything else (no such minion, one in this process, a process not on this host
or stopping, a full backlog) serves the handshake here, as before. Both ends
check that the other is a process of the same user (SO_PEERCRED): anyone on
the host may bind an abstract name, a dead worker's too. The sender has
already asked the door (herder/door.py); the receiver asks it again, with its
own counts.
"""

from __future__ import annotations

import array
import asyncio
import logging
import os
import socket
from collections.abc import Awaitable, Callable

from herder import metrics
from herder.channel_layer import listening_on, peer_uid

logger = logging.getLogger(__name__)

# A request larger than this (its headers) is served where it arrived.
MAX_REQUEST = 64 * 1024
_ANCILLARY = socket.CMSG_SPACE(array.array("i", [0]).itemsize)


def address(client_prefix: str) -> str:
    """The abstract datagram socket a process with this client prefix listens on."""
    return f"\0herder-handoff-{client_prefix}"


class Handoff:
    """One process's end: `where(scope)` finds the process a handshake belongs
    in, `send` passes the connection there, and `listen` serves connections
    passed here with `create_protocol`'s protocols."""

    def __init__(
        self,
        *,
        here: str,
        peer_process: Callable[[dict], Awaitable[str | None]],
    ) -> None:
        self.here = here
        # The client prefix of the process a handshake's peer is in, or None.
        self.peer_process = peer_process
        self.create_protocol: Callable[[], asyncio.Protocol] | None = None
        self.handed = 0  # connections passed to other processes (tests read it)
        self.taken = 0  # connections passed here
        self._listening: socket.socket | None = None
        self._arriving: set[socket.socket] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def for_layer(cls, peer_process: Callable[[dict], Awaitable[str | None]]) -> Handoff | None:
        """The handoff of this process's channel layer; None unless it links
        the processes of this host (herder/channel_layer.py)."""
        from channels.layers import get_channel_layer

        layer = get_channel_layer()
        if not getattr(layer, "link", False):
            return None
        return cls(here=layer.client_prefix, peer_process=peer_process)

    async def where(self, scope: dict) -> str | None:
        """The prefix of another process to pass this handshake to, or None."""
        if self._listening is None:
            return None  # not serving (yet, or any more): keep what arrives
        try:
            process = await self.peer_process(scope)
        except Exception:  # Redis down: the handshake is served here, as before
            logger.warning("could not find where a handshake's peer is", exc_info=True)
            return None
        return process if process and process != self.here else None

    def send(self, process: str, connection: socket.socket | int, request: bytes) -> bool:
        """Pass the connection and the request read from it so far; True when
        the other process has it (then this one closes its copy, which leaves
        the connection open). Never waits: a Unix socket connects at once or
        is refused, and one message fits an empty connection's queue."""
        if len(request) > MAX_REQUEST:
            return False
        fd = connection if isinstance(connection, int) else connection.fileno()
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.setblocking(False)
            try:
                sock.connect(address(process))
                # Anyone may bind an abstract name, e.g. a dead worker's: only a
                # process of this user is given a client's connection.
                if peer_uid(sock) != os.getuid():
                    logger.warning("the handoff socket of %s is not this user's", process)
                    return False
                sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            except OSError:  # not on this host, gone, stopping, or too busy to accept
                return False
        self.handed += 1
        metrics.websockets_handed_over.inc()
        return True

    def listen(self, create_protocol: Callable[[], asyncio.Protocol]) -> None:
        """On the serving loop, once the server is up."""
        sock = listening_on(address(self.here), socket.SOCK_SEQPACKET)
        if sock is None:
            logger.warning("cannot take connections from this host's other processes: pairs split across them")
            return
        sock.setblocking(False)
        self.create_protocol = create_protocol
        self._listening = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._accept)

    def close(self) -> None:
        """Stop taking connections: senders find nobody and serve theirs themselves.
        (A connection on its way is closed with the socket: its client sees it end.)"""
        sock, self._listening = self._listening, None
        if sock is not None:
            self._loop.remove_reader(sock.fileno())
            sock.close()
        for arriving in list(self._arriving):
            self._done_with(arriving)

    def _accept(self) -> None:
        while self._listening is not None:
            try:
                sock, _ = self._listening.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                logger.warning("the handoff socket failed", exc_info=True)
                return
            uid = peer_uid(sock)
            if uid != os.getuid():
                logger.warning("refused a connection handed over by uid %d", uid)
                sock.close()
                continue
            sock.setblocking(False)
            self._arriving.add(sock)
            # Its one message may come after the accept.
            self._loop.add_reader(sock.fileno(), self._receive, sock)

    def _done_with(self, sock: socket.socket) -> None:
        self._arriving.discard(sock)
        self._loop.remove_reader(sock.fileno())
        sock.close()

    def _receive(self, sock: socket.socket) -> None:
        try:
            request, ancillary, flags, _ = sock.recvmsg(MAX_REQUEST, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            request, ancillary, flags = b"", [], 0
        self._done_with(sock)
        fds = []
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += array.array("i", data[: len(data) - len(data) % 4]).tolist()
        if len(fds) != 1 or not request or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            for fd in fds:
                os.close(fd)
            return
        self._loop.create_task(self._serve(socket.socket(fileno=fds[0]), request))

    async def _serve(self, connection: socket.socket, request: bytes) -> None:
        connection.setblocking(False)
        try:
            _, protocol = await self._loop.connect_accepted_socket(self.create_protocol, sock=connection)
        except OSError:
            connection.close()  # the client left meanwhile
            return
        self.taken += 1
        protocol.handed_in = True  # served here, whatever its peer's process says
        protocol.data_received(request)
