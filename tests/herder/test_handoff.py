"""Handing a connection to another process (herder/handoff.py), with real
sockets: a loopback TCP connection passed over the abstract datagram socket, on
uvloop as the herder serves. The two ends are two Handoff objects in one
process (what crosses is the descriptor, exactly as between processes); the
stranger is a real process of another user. tests/herder/test_workers.py
checks the herd: every pair served by one worker."""

from __future__ import annotations

import array
import asyncio
import os
import socket
import uuid

import uvloop

from herder.handoff import MAX_REQUEST, Handoff, address

NOBODY = 65534
REQUEST = b"GET /golem/v1/connect-to/w/m HTTP/1.1\r\nhost: herder.test\r\n\r\n"


class Recorder(asyncio.Protocol):
    """Stands in for the server's HTTP protocol: records what it is fed."""

    handed_in = False

    def __init__(self, received: asyncio.Queue) -> None:
        self.received = received

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.put_nowait((self, data))


def connected_pair() -> tuple[socket.socket, socket.socket]:
    """(client, the server's accepted end) of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    client.setblocking(False)
    return client, accepted


async def nothing(scope: dict) -> None:
    return None


def test_a_handed_connection_is_served_where_it_was_sent_and_stays_open():
    async def main():
        loop = asyncio.get_running_loop()
        received = asyncio.Queue()
        here = f"test-{uuid.uuid4().hex}"
        receiver = Handoff(here=here, peer_process=nothing)
        receiver.listen(lambda: Recorder(received))
        sender = Handoff(here="sender", peer_process=nothing)
        client, accepted = connected_pair()
        try:
            assert sender.send(here, accepted.fileno(), REQUEST)
            accepted.close()  # the sender's copy, as its transport does once sent
            protocol, data = await asyncio.wait_for(received.get(), 5)
            # The request's bytes first, then the connection as the client left it.
            assert data == REQUEST
            assert protocol.handed_in
            assert (sender.handed, receiver.taken) == (1, 1)
            protocol.transport.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
            assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
            await loop.sock_sendall(client, b"a frame")
            assert await asyncio.wait_for(received.get(), 5) == (protocol, b"a frame")
            protocol.transport.close()
            assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b""
        finally:
            client.close()
            receiver.close()

    uvloop.run(main())


def test_a_connection_handed_by_another_user_is_closed_unserved():
    async def main():
        loop = asyncio.get_running_loop()
        received = asyncio.Queue()
        here = f"test-{uuid.uuid4().hex}"
        receiver = Handoff(here=here, peer_process=nothing)
        receiver.listen(lambda: Recorder(received))
        client, accepted = connected_pair()
        try:
            # A process of another user on this host sends its own connection.
            stranger = os.fork()
            if stranger == 0:
                sent = False
                try:
                    os.setgid(NOBODY)
                    os.setuid(NOBODY)
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    sock.connect(address(here))
                    fds = array.array("i", [accepted.fileno()])
                    sock.sendmsg([REQUEST], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                    sent = True
                finally:
                    os._exit(0 if sent else 1)
            assert os.waitpid(stranger, 0)[1] == 0
            accepted.close()
            # Its connection is closed, not served: the client sees the end.
            assert await asyncio.wait_for(loop.sock_recv(client, 100), 5) == b""
            assert received.empty() and receiver.taken == 0
        finally:
            client.close()
            receiver.close()

    uvloop.run(main())


def test_a_connection_is_not_handed_to_another_users_socket():
    # Anyone on the host may bind an abstract name, e.g. a dead worker's that
    # Redis still names: a process of another user listens on it.
    here = f"test-{uuid.uuid4().hex}"
    listening, tell_listening = os.pipe()
    done, tell_done = os.pipe()
    squatter = os.fork()
    if squatter == 0:
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            sock.bind(address(here))
            sock.listen(8)
            os.write(tell_listening, b"listening")
            os.read(done, 1)  # until the test is done
        finally:
            os._exit(0)
    client, accepted = connected_pair()
    try:
        assert os.read(listening, 9) == b"listening"
        sender = Handoff(here="sender", peer_process=nothing)
        assert not sender.send(here, accepted.fileno(), REQUEST)
        assert sender.handed == 0
    finally:
        os.write(tell_done, b"x")
        os.waitpid(squatter, 0)
        for fd in (listening, tell_listening, done, tell_done):
            os.close(fd)
        client.close()
        accepted.close()


def test_nobody_listening_or_a_request_too_large_keeps_the_connection_here():
    async def main():
        here = f"test-{uuid.uuid4().hex}"
        receiver = Handoff(here=here, peer_process=nothing)
        receiver.listen(lambda: Recorder(asyncio.Queue()))
        client, accepted = connected_pair()
        try:
            sender = Handoff(here="sender", peer_process=nothing)
            assert not sender.send(f"test-absent-{uuid.uuid4().hex}", accepted.fileno(), REQUEST)
            assert not sender.send(here, accepted.fileno(), b"x" * (MAX_REQUEST + 1))
            assert sender.handed == 0 and receiver.taken == 0
            # Still this process's connection to serve.
            accepted.sendall(b"still here")
            assert await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 100), 5) == b"still here"
        finally:
            client.close()
            accepted.close()
            receiver.close()

    uvloop.run(main())


def test_where_names_another_process_only():
    async def main():
        async def elsewhere(scope):
            return "other"

        async def this_one(scope):
            return handoffs["here"].here

        async def redis_down(scope):
            raise ConnectionError("Redis is down")

        finders = {"elsewhere": elsewhere, "here": this_one, "down": redis_down, "none": nothing}
        handoffs = {name: Handoff(here=f"test-{uuid.uuid4().hex}", peer_process=find) for name, find in finders.items()}
        scope = {"type": "websocket", "path": "/golem/v1/connect-to/w/m"}
        # Not listening yet (or stopping): whatever arrives is served here.
        assert await handoffs["elsewhere"].where(scope) is None
        for handoff in handoffs.values():
            handoff.listen(lambda: Recorder(asyncio.Queue()))
        try:
            assert await handoffs["elsewhere"].where(scope) == "other"
            assert await handoffs["here"].where(scope) is None
            assert await handoffs["down"].where(scope) is None
            assert await handoffs["none"].where(scope) is None
        finally:
            for handoff in handoffs.values():
                handoff.close()

    uvloop.run(main())
