"""The proxy's client for requests without a body (daemons/upstream.py),
against small HTTP servers on loopback that answer in the ways daemons do."""

import asyncio

import pytest

from daemons import upstream


class Server:
    """An HTTP/1.1 server answering every request with `answer(n)` (n: the
    request's number on its connection); counts connections."""

    def __init__(self, answer) -> None:
        self.answer = answer
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = self.server.sockets[0].getsockname()[:2]
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader, writer):
        self.connections += 1
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                n += 1
                for part in self.answer(n):
                    if part is None:
                        writer.close()
                        return
                    writer.write(part)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


async def get(address, path="/", **kwargs):
    head = upstream.request_head("GET", path, *address, [(b"x-test", b"1")])
    connection, kept = await upstream.send(address, head, connect_timeout=5, read_timeout=5, **kwargs)
    body = b""
    while chunk := await connection.chunk():
        body += chunk
    upstream.give_back(address, connection)
    return connection, kept, body


def run(coroutine):
    async def main():
        try:
            return await coroutine
        finally:
            upstream.close_idle()

    return asyncio.run(main())


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_kept_connections_serve_the_next_requests():
    async def scenario():
        async with Server(lambda n: [OK]) as server:
            answers = [await get(server.address) for _ in range(3)]
            return server, answers

    server, answers = run(scenario())
    assert [(c.status, kept, body) for c, kept, body in answers] == [
        (200, False, b"hello"),
        (200, True, b"hello"),
        (200, True, b"hello"),
    ]
    assert server.connections == 1
    assert server.requests[0].startswith(b"GET / HTTP/1.1\r\nhost: 127.0.0.1:")
    assert b"\r\nx-test: 1\r\n" in server.requests[0]


def test_a_connection_the_daemon_closes_is_not_kept():
    async def scenario():
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        async with Server(lambda n: [answer, None]) as server:
            answers = [await get(server.address) for _ in range(2)]
            return server, answers

    server, answers = run(scenario())
    assert [kept for _, kept, _ in answers] == [False, False]
    assert server.connections == 2


def test_a_kept_connection_closed_meanwhile_is_dropped_and_a_fresh_one_answers():
    async def scenario():
        # The server answers once per connection, then closes it without a word.
        async with Server(lambda n: [OK] if n == 1 else [None]) as server:
            await get(server.address)
            await asyncio.sleep(0.05)
            try:
                await get(server.address)
            except upstream.Dropped:
                dropped = True
            else:
                dropped = False
            _, kept, body = await get(server.address, fresh=True)
            return dropped, kept, body

    assert run(scenario()) == (True, False, b"hello")


def test_bodies_chunked_long_or_ended_by_the_connection_stream_whole():
    big = bytes(range(256)) * 4096  # 1 MiB: past the buffer, so reading pauses and resumes
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for start in range(0, len(big), 100_000):
        part = big[start : start + 100_000]
        chunked += b"%x\r\n%s\r\n" % (len(part), part)
    chunked += b"0\r\n\r\n"
    until_close = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + big

    async def scenario():
        results = []
        for answer in ([chunked], [until_close, None]):
            async with Server(lambda n, answer=answer: answer) as server:
                connection, _, body = await get(server.address)
                results.append((connection.status, body == big, connection.keep_alive))
        return results

    assert run(scenario()) == [(200, True, True), (200, True, False)]


def test_an_interim_answer_is_skipped_and_a_cut_body_is_an_error():
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this"

    async def scenario():
        async with Server(lambda n: [early, OK]) as server:
            connection, _, body = await get(server.address)
            first = (connection.status, body, [name for name, _ in connection.headers])
        async with Server(lambda n: [cut, None]) as server:
            with pytest.raises(upstream.Cut):
                await get(server.address)
        return first

    assert run(scenario()) == (200, b"hello", [b"Content-Length"])


def test_a_refused_address_and_a_silent_daemon():
    async def scenario():
        async with Server(lambda n: []) as server:  # reads the request, never answers
            with pytest.raises(TimeoutError):
                head = upstream.request_head("GET", "/", *server.address, [])
                await upstream.send(server.address, head, connect_timeout=5, read_timeout=0.2)
            address = server.address
        with pytest.raises(upstream.Refused):
            await get(address)

    run(scenario())


def test_a_switch_of_protocols_is_a_bad_answer():
    switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"

    async def scenario():
        async with Server(lambda n: [switch]) as server:
            with pytest.raises(upstream.BadAnswer):
                await get(server.address)

    run(scenario())
