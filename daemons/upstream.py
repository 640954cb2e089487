"""The proxy's HTTP/1.1 client for requests without a body (GET and the like):
a keep-alive connection per request in flight, parsed by httptools (llhttp,
uvicorn's parser).

aiohttp, which the proxy keeps for requests with a body and for HEAD, spent
~100 us of CPU on each request here against ~15 us for this (bench/workers.py
measures the proxy at ~270 us a request): the proxy is mostly an upstream
client, and every worker would repeat that cost.

A response streams: its body is handed over as it arrives, and reading from
the daemon pauses while more than BUFFERED bytes wait for the client.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import deque

import httptools

# Past this many bytes read and not yet taken, stop reading from the daemon.
BUFFERED = 256 * 1024
# Idle connections kept per daemon address and event loop.
IDLE_PER_ADDRESS = 32


class Refused(OSError):
    """The daemon's address did not accept a connection."""


class Dropped(Exception):
    """The connection ended before the answer's head: nothing of the request
    was answered (a kept connection the daemon had closed)."""


class BadAnswer(Exception):
    """The daemon's answer is not HTTP/1.1 the proxy can relay."""


class Cut(Exception):
    """The connection ended in the middle of the answer's body."""


class _Connection(asyncio.Protocol):
    """One connection to a daemon; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.loop = asyncio.get_running_loop()
        self.lost = False
        self._begin()

    def _begin(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.framed = False  # Content-Length or chunked: the end is not the connection's
        self.head_done = False
        self.keep_alive = False
        self.complete = False
        self.error: Exception | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.waiter: asyncio.Future | None = None

    # asyncio.Protocol

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadAnswer("the daemon switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(BadAnswer(str(exc)))

    def connection_lost(self, exc) -> None:
        self.lost = True
        if not self.complete and self.error is None:
            if not self.head_done:
                self.error = Dropped()
            elif not self.framed and 200 <= self.status and self.status not in (204, 304):
                self.complete = True  # a body that ends with the connection
            else:
                self.error = Cut()
        self._wake()

    def pause_writing(self) -> None:  # a request head never fills the buffer
        pass

    def resume_writing(self) -> None:
        pass

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (lowered == b"transfer-encoding" and b"chunked" in value.lower()):
            self.framed = True

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (103 Early Hints, a stray 100): not relayed;
            # the real one follows on the same connection.
            self.headers.clear()
            self.framed = False
            return
        self.status = status
        self.head_done = True
        # Asked now: llhttp forgets it once the message is complete.
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > BUFFERED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self._wake()

    # the client side

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def _wait(self) -> None:
        self.waiter = self.loop.create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def head(self) -> None:
        """Wait for the answer's status and headers."""
        while not self.head_done:
            if self.error is not None:
                raise self.error
            await self._wait()

    def chunk_nowait(self) -> bytes | None:
        """The next piece of the body, b"" once it is whole, or None when it
        has to be waited for. Raises Cut or BadAnswer."""
        if self.chunks:
            chunk = self.chunks.popleft()
            self.buffered -= len(chunk)
            if self.paused and self.buffered <= BUFFERED // 2 and not self.lost:
                self.paused = False
                self.transport.resume_reading()
            return chunk
        if self.complete:
            return b""
        if self.error is not None:
            raise self.error
        return None

    async def chunk(self) -> bytes:
        """The next piece of the body; b"" once it is whole."""
        while (chunk := self.chunk_nowait()) is None:
            await self._wait()
        return chunk

    @property
    def done(self) -> bool:
        """The answer is whole and nothing more waits to be taken."""
        return self.complete and not self.chunks

    def reusable(self) -> bool:
        return self.done and not self.lost and self.error is None and self.keep_alive

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


# event loop -> (host, port) -> idle connections: a connection belongs to its loop.
_idle: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _take_idle(address: tuple[str, int]) -> _Connection | None:
    by_address = _idle.get(asyncio.get_running_loop(), {})
    idle = by_address.get(address)
    while idle:
        connection = idle.pop()
        if not connection.lost and not connection.transport.is_closing():
            connection._begin()
            return connection
    # None left: forget the address (a daemon restarted on new ports leaves its old one).
    by_address.pop(address, None)
    return None


def give_back(address: tuple[str, int], connection: _Connection) -> None:
    """Keep a connection whose answer was read whole for the next request;
    close any other."""
    if not connection.reusable():
        connection.close()
        return
    idle = _idle.setdefault(asyncio.get_running_loop(), {}).setdefault(address, [])
    if len(idle) >= IDLE_PER_ADDRESS:
        connection.close()
        return
    idle.append(connection)


def close_idle() -> None:
    """Close this event loop's idle connections (before the loop closes)."""
    for idle in _idle.pop(asyncio.get_running_loop(), {}).values():
        for connection in idle:
            connection.close()


def request_head(method: str, target: str, host: str, port: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The request's bytes. The caller checked that nothing in it can break
    the framing (no CR, LF or NUL; method and target are tokens)."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"{method} {target} HTTP/1.1\r\nhost: {authority}\r\n".encode("latin-1")]
    lines += [b"%s: %s\r\n" % (name, value) for name, value in headers]
    lines.append(b"\r\n")
    return b"".join(lines)


async def send(
    address: tuple[str, int], head: bytes, *, connect_timeout: float, read_timeout: float, fresh: bool = False
) -> tuple[_Connection, bool]:
    """Send a request without a body and wait for the answer's head, on a
    kept connection unless `fresh`. Returns the connection and whether it was
    a kept one. Raises Refused, Dropped (the connection ended before any
    answer: a kept one the daemon had closed), BadAnswer, TimeoutError (the
    connection is closed then)."""
    connection = None if fresh else _take_idle(address)
    kept = connection is not None
    if connection is None:
        try:
            async with asyncio.timeout(connect_timeout):
                _, connection = await asyncio.get_running_loop().create_connection(_Connection, *address)
        except OSError as exc:
            raise Refused(str(exc)) from exc
    try:
        connection.transport.write(head)
        async with asyncio.timeout(read_timeout):
            await connection.head()
    except BaseException:
        connection.close()
        raise
    return connection, kept
