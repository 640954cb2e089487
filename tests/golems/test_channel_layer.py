"""The herder's channel layer (herder/channel_layer.py) on a real Redis of the
test's own (a `redis-server` on a free port, so that it can be stopped), and
pairs relayed by real server processes (uvicorn, as `herd` runs it).

What must hold: a message to a channel of the same process never reaches Redis
(a pair within one process keeps relaying with Redis stopped), processes of one
host talk over the link (not Redis), capacity and order hold on every path,
and a process that is not on the host is reached through Redis."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack

import msgpack
import pytest
import redis
from channels.exceptions import ChannelFull
from websockets.sync.client import connect

from herder.channel_layer import HerderChannelLayer, link_address
from tests.golems.conftest import ROOT, free_port, herder_env, migrate, wait_for_port


class PrivateRedis:
    """A redis-server of this test alone, which the test may stop and start again."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server; deploy/start-services.sh).")
        self.binary = binary
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port("127.0.0.1", self.port, process=self.process)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)

    def reset_counts(self) -> None:
        self.client().config_resetstat()

    def calls(self, *commands: str) -> int:
        """How many of these commands Redis ran since the last reset."""
        stats = self.client().info("commandstats")
        return sum(stats.get(f"cmdstat_{command}", {}).get("calls", 0) for command in commands)


# Every command that puts a message into Redis (a blocking pop that times out
# counts as a call, so the reader's pops are not counted).
MESSAGE_COMMANDS = ("evalsha", "eval", "zadd")


@pytest.fixture
def private_redis():
    server = PrivateRedis()
    yield server
    server.stop()


def layer(url: str, **config) -> HerderChannelLayer:
    return HerderChannelLayer(hosts=[{"address": url, "socket_timeout": 30}], **config)


async def receive(layer: HerderChannelLayer, channel: str, timeout: float = 5) -> dict:
    return await asyncio.wait_for(layer.receive(channel), timeout)


# --- The layer ---------------------------------------------------------------


def test_a_message_to_a_channel_of_this_process_never_reaches_redis(private_redis):
    async def scenario():
        one = layer(private_redis.url)
        channel = await one.new_channel()
        await one.group_add("herder-test-group", channel)
        await asyncio.sleep(0.2)  # the reader's first pop is under way
        private_redis.reset_counts()
        for i in range(50):
            await one.send(channel, {"type": "relay.frame", "text": f"m{i}"})
        assert [(await receive(one, channel))["text"] for _ in range(50)] == [f"m{i}" for i in range(50)]
        assert private_redis.calls(*MESSAGE_COMMANDS) == 0
        # A group lives in Redis, but its member here gets the message directly.
        await one.group_send("herder-test-group", {"type": "group.hello"})
        assert await receive(one, channel) == {"type": "group.hello"}
        assert private_redis.calls(*MESSAGE_COMMANDS) == 0

        private_redis.stop()
        await one.send(channel, {"type": "relay.frame", "text": "without Redis"})
        assert (await receive(one, channel))["text"] == "without Redis"
        await one.close_links()

    asyncio.run(scenario())


def test_a_full_channel_of_this_process_refuses_more_until_read(private_redis):
    async def scenario():
        one = layer(private_redis.url, capacity=3)
        channel = await one.new_channel()
        for i in range(3):
            await one.send(channel, {"type": "m", "n": i})
        with pytest.raises(ChannelFull):
            await one.send(channel, {"type": "m", "n": 3})
        assert (await receive(one, channel))["n"] == 0
        await one.send(channel, {"type": "m", "n": 4})
        assert [(await receive(one, channel))["n"] for _ in range(3)] == [1, 2, 4]
        await one.close_links()

    asyncio.run(scenario())


def test_processes_of_one_host_talk_over_the_link_not_redis(private_redis):
    """Two layers with their own client prefixes, as two processes have."""

    async def scenario():
        a, b = layer(private_redis.url), layer(private_redis.url)
        to_a, to_b = await a.new_channel(), await b.new_channel()
        await asyncio.sleep(0.2)
        private_redis.reset_counts()
        for i in range(60):
            await a.send(to_b, {"type": "relay.frame", "bytes": i.to_bytes(2, "big")})
            await b.send(to_a, {"type": "relay.frame", "text": f"m{i}"})
        assert [(await receive(b, to_b))["bytes"] for _ in range(60)] == [i.to_bytes(2, "big") for i in range(60)]
        assert [(await receive(a, to_a))["text"] for _ in range(60)] == [f"m{i}" for i in range(60)]
        assert private_redis.calls(*MESSAGE_COMMANDS) == 0

        private_redis.stop()
        await a.send(to_b, {"type": "relay.frame", "text": "without Redis"})
        assert (await receive(b, to_b))["text"] == "without Redis"
        for each in (a, b):
            await each.close_links()

    asyncio.run(scenario())


def test_a_full_channel_over_the_link_refuses_keeps_order_and_recovers(private_redis):
    async def scenario():
        a, b = layer(private_redis.url), layer(private_redis.url, capacity=6)
        await a.new_channel()
        to_b = await b.new_channel()
        sent, refused = [], 0
        for i in range(40):
            try:
                await a.send(to_b, {"type": "m", "n": i})
                sent.append(i)
            except ChannelFull:
                refused += 1
            await asyncio.sleep(0.005)  # the receiver's notice has time to arrive
        assert refused > 0
        # What the sender wrote before it heard "full" is kept: a few over capacity at most.
        assert 6 <= len(sent) <= 10
        received = [(await receive(b, to_b))["n"] for _ in range(len(sent) - 2)]
        await asyncio.sleep(0.05)  # read below half: the sender is told there is room
        await a.send(to_b, {"type": "m", "n": 100})
        received += [(await receive(b, to_b))["n"] for _ in range(3)]
        assert received == [*sent, 100]
        for each in (a, b):
            await each.close_links()

    asyncio.run(scenario())


def test_a_process_not_on_this_host_is_reached_through_redis(private_redis):
    """Without the link (as a herder on another host), messages go through Redis;
    so do messages to a process that is gone, with Redis' capacity."""

    async def scenario():
        a = layer(private_redis.url)
        elsewhere = layer(private_redis.url, link=False)
        await a.new_channel()
        to_elsewhere = await elsewhere.new_channel()
        private_redis.reset_counts()
        for i in range(5):
            await a.send(to_elsewhere, {"type": "m", "n": i})
        assert private_redis.calls("evalsha", "eval") >= 5
        assert [(await receive(elsewhere, to_elsewhere))["n"] for _ in range(5)] == list(range(5))

        gone = f"specific.{uuid.uuid4().hex}!{uuid.uuid4().hex}"
        for i in range(100):
            await a.send(gone, {"type": "m", "n": i})
        with pytest.raises(ChannelFull):
            await a.send(gone, {"type": "m", "n": 100})
        for each in (a, elsewhere):
            await each.close_links()

    asyncio.run(scenario())


def test_receiving_waits_out_a_redis_outage(private_redis):
    async def scenario():
        a = layer(private_redis.url, link=False)
        b = layer(private_redis.url, link=False)
        to_a = await a.new_channel()
        await b.new_channel()
        private_redis.stop()
        await asyncio.sleep(1.5)  # a's reader fails to reach Redis, and retries
        private_redis.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                await b.send(to_a, {"type": "after.outage"})
                break
            except redis.exceptions.ConnectionError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        assert await receive(a, to_a, timeout=15) == {"type": "after.outage"}
        for each in (a, b):
            await each.close_links()

    asyncio.run(scenario())


# --- Pairs relayed by server processes ---------------------------------------


class Server:
    """uvicorn on uvloop, as `herd` serves (herder/servers.py)."""

    def __init__(self, env: dict[str, str], log) -> None:
        self.port = free_port()
        self.log = log
        self._log = open(log, "wb")
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "herder.asgi:application"),
                *("--host", "127.0.0.1", "--port", str(self.port), "--loop", "uvloop", "--http", "httptools"),
                *("--ws", "websockets-sansio", "--lifespan", "off", "--log-level", "warning"),
            ],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port("127.0.0.1", self.port, process=self.process)

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        print(f"--- server on port {self.port}\n{self.log.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def servers(tmp_path, private_redis):
    env = herder_env(tmp_path, REDIS_URL=private_redis.url, HERDER_GOLEM_WAIT="10")
    migrate(env)
    started = []

    def start(name: str) -> Server:
        started.append(Server(env, tmp_path / f"server-{name}.log"))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def relay_both_ways(minion, golem, count: int = 100) -> None:
    for i in range(count):
        minion.send(f"m{i}")
        golem.send(i.to_bytes(2, "big"))
    assert [golem.recv(timeout=10) for _ in range(count)] == [f"m{i}" for i in range(count)]
    assert [minion.recv(timeout=10) for _ in range(count)] == [i.to_bytes(2, "big") for i in range(count)]


def paired(sockets: ExitStack, control_at: Server, minion_at: Server, golem_at: Server):
    """Minion and the golem's socket to it (and the control socket), each on the given server."""
    webstrate = f"layer-{uuid.uuid4().hex[:8]}"
    control = sockets.enter_context(connect(f"{control_at.ws}/golem/v1/connect/{webstrate}"))
    minion = sockets.enter_context(connect(f"{minion_at.ws}/minion/v1/connect/{webstrate}?type=python"))
    announced = json.loads(control.recv(timeout=10))
    assert announced["Event"] == "minion-connected"
    golem = sockets.enter_context(connect(f"{golem_at.ws}/golem/v1/connect-to/{webstrate}/{announced['ID']}"))
    assert json.loads(minion.recv(timeout=10)) == {"Event": "golem-connected"}
    return minion, golem


def test_a_pair_within_one_process_relays_with_redis_stopped(servers, private_redis):
    one = servers("one")
    with ExitStack() as sockets:
        minion, golem = paired(sockets, one, one, one)
        private_redis.reset_counts()
        relay_both_ways(minion, golem)
        assert private_redis.calls(*MESSAGE_COMMANDS) == 0
        private_redis.stop()
        relay_both_ways(minion, golem)
        time.sleep(6)  # past the reader's blocking pop: its failure ends no socket
        relay_both_ways(minion, golem, 10)


def test_a_pair_split_over_two_processes_relays_over_the_link(servers, private_redis):
    a, b = servers("a"), servers("b")
    with ExitStack() as sockets:
        minion, golem = paired(sockets, a, b, a)
        private_redis.reset_counts()
        relay_both_ways(minion, golem)
        assert private_redis.calls(*MESSAGE_COMMANDS) == 0
        private_redis.stop()
        relay_both_ways(minion, golem)


# Connects to a link and writes one framed message (given in hex); says whether
# the layer closed the connection. Plain python3: another user may not run ours.
INTRUDER = """
import socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1].replace("NUL", "\\0"))
try:
    sock.sendall(bytes.fromhex(sys.argv[2]))
    print("closed" if sock.recv(10) == b"" else "answered")
except ConnectionError:
    print("closed")
"""


def test_a_process_of_another_user_cannot_inject_messages(private_redis):
    """The link is as private as the process: another user (nobody) is cut off."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.fail("/usr/bin/python3 is missing (Debian's python3)")

    async def scenario():
        one = layer(private_redis.url)
        channel = await one.new_channel()
        address = link_address(one.client_prefix).replace("\0", "NUL")
        data = msgpack.packb([channel, {"type": "relay.frame", "text": "injected"}], use_bin_type=True)
        frame = (struct.pack(">I", len(data)) + data).hex()

        async def run(**user):
            return await asyncio.create_subprocess_exec(
                python, "-c", INTRUDER, address, frame, stdout=subprocess.PIPE, cwd="/", **user
            )

        intruder = await run(user=65534)
        output, _ = await asyncio.wait_for(intruder.communicate(), 10)
        assert output.decode().strip() == "closed"
        with pytest.raises(asyncio.TimeoutError):
            await receive(one, channel, timeout=0.5)
        # The same program as this user is heard (the test can fail).
        same = await run()
        communicating = asyncio.ensure_future(same.communicate())
        assert (await receive(one, channel))["text"] == "injected"
        same.kill()
        await communicating
        await one.close_links()

    asyncio.run(scenario())


def test_a_process_of_another_user_on_a_link_name_is_not_told_messages(private_redis):
    """Anyone may bind an abstract name, e.g. that of a dead process Redis still
    names: another user (nobody) listening on it gets nothing; Redis is used."""

    async def scenario():
        a = layer(private_redis.url)
        await a.new_channel()
        gone = f"specific.{uuid.uuid4().hex}!{uuid.uuid4().hex}"
        listening, tell_listening = os.pipe()
        done, tell_done = os.pipe()
        squatter = os.fork()
        if squatter == 0:
            try:
                os.setgid(65534)
                os.setuid(65534)
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.bind(link_address(gone.partition("!")[0].rpartition(".")[2]))
                sock.listen(8)
                os.write(tell_listening, b"listening")
                os.read(done, 1)  # until the test is done
            finally:
                os._exit(0)
        try:
            assert os.read(listening, 9) == b"listening"
            private_redis.reset_counts()
            await a.send(gone, {"type": "m", "text": "not for strangers"})
            assert private_redis.calls("evalsha", "eval") >= 1  # through Redis, not the squatter
        finally:
            os.write(tell_done, b"x")
            os.waitpid(squatter, 0)
            for fd in (listening, tell_listening, done, tell_done):
                os.close(fd)
            await a.close_links()

    asyncio.run(scenario())


def test_a_split_pair_streaming_both_ways_past_every_buffer_loses_nothing(servers):
    """Thousands of frames each way before either side reads: more than the
    channels (100), the outboxes and the sockets hold, so the receivers say
    "full" and later "room" over the link; everything arrives, in order."""
    a, b = servers("a"), servers("b")
    count, pad = 2000, "x" * 2000  # 4 MB each way, past loopback's socket buffers
    with ExitStack() as sockets:
        minion, golem = paired(sockets, a, b, a)
        for i in range(count):
            minion.send(f"m{i}{pad}")
            golem.send(i.to_bytes(2, "big") + pad.encode())
        assert [golem.recv(timeout=30) for _ in range(count)] == [f"m{i}{pad}" for i in range(count)]
        assert [minion.recv(timeout=30) for _ in range(count)] == [
            i.to_bytes(2, "big") + pad.encode() for i in range(count)
        ]
