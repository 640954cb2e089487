"""The ASGI servers `herd` can run the herder on: uvicorn (uvloop, httptools,
websockets-sansio; the faster in bench/) or Daphne. The same application runs
on both.

`on_signal` runs in a thread of its own at SIGINT/SIGTERM, before the server
winds down: requests still running would otherwise hold the process up.

`sock`, when given, is a listening socket made by `herd` (one worker's
SO_REUSEPORT socket, herder/workers.py); otherwise the server binds host:port.
"""

from __future__ import annotations

import functools
import signal
import socket
import sys
import threading
from collections.abc import Callable


def _in_thread(on_signal: Callable[[], object]) -> None:
    threading.Thread(target=on_signal, name="herder-stopping").start()


def _websocket_protocol():
    """uvicorn's websockets-sansio protocol, which after an HTTP answer to a
    handshake (a 429) still logs "ASGI callable returned without completing
    handshake" at error level: a line of noise and about a tenth of the
    refusal's CPU, for every socket refused under a flood."""
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    class Protocol(WebSocketsSansIOProtocol):
        async def send(self, message) -> None:
            await super().send(message)
            if message["type"] == "websocket.http.response.body" and not message.get("more_body"):
                self.handshake_complete = True  # answered: nothing left to complete

    return Protocol


class _Answered:
    """Stands in for the request cycle of a request answered at the door: the
    parser's callbacks for the rest of its bytes find it complete."""

    response_complete = True
    disconnected = False

    def __init__(self) -> None:
        import asyncio

        self.message_event = asyncio.Event()


def _http_protocol(door, handoff=None):
    """uvicorn's httptools protocol, asking the door (herder/door.py) once a
    POST's or a WebSocket handshake's headers are in, then, for a handshake,
    whether another process should serve it (herder/handoff.py)."""
    import urllib.parse

    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class Protocol(HttpToolsProtocol):
        _door_timer = None  # an answer held back by the door, to write later
        handed_in = False  # handed here by another process, or already asked: served here

        def on_headers_complete(self) -> None:
            if self.transport.is_closing():
                return  # pipelined behind a request answered at the door: nothing more is served
            if (self.parser.should_upgrade() and self._should_upgrade()) or not self._answered_at_door("http"):
                super().on_headers_complete()

        def handle_websocket_upgrade(self) -> None:
            if self._answered_at_door("websocket"):
                return
            if handoff is None or self.handed_in:
                super().handle_websocket_upgrade()
                return
            self.handed_in = True
            # Nothing more is read until it is known where it is served.
            self.transport.pause_reading()
            self._handing = self.loop.create_task(self._hand_off())

        async def _hand_off(self) -> None:
            process = await handoff.where(self._head("websocket"))
            if self.transport.is_closing():
                return  # the client left meanwhile
            if process is not None:
                # As uvicorn gives a handshake to its WebSocket protocol.
                request = [self.scope["method"].encode(), b" ", self.url, b" HTTP/1.1\r\n"]
                for name, value in self.scope["headers"]:
                    request += [name, b": ", value, b"\r\n"]
                request.append(b"\r\n")
                connection = self.transport.get_extra_info("socket")
                if handoff.send(process, connection.fileno(), b"".join(request)):
                    # The other process holds the connection: closing this copy leaves it open.
                    self.transport.abort()
                    return
            super().handle_websocket_upgrade()
            self.transport.resume_reading()

        def _answered_at_door(self, kind: str) -> bool:
            method = self.parser.get_method()
            if kind == "http" and method != b"POST":
                return False
            if self.cycle is not None and not self.cycle.response_complete:
                return False  # pipelined behind a request in progress: answered in turn
            answer = door.answer(self._head(kind))
            if answer is None:
                return False
            data, delay = answer
            if kind == "http":
                self.cycle = _Answered()
            if delay and door.hold():
                # Nothing more is read from it meanwhile.
                self.transport.pause_reading()
                self._door_timer = self.loop.call_later(delay, self._write_held, data)
            else:
                self._write_and_close(data)
            return True

        def _head(self, kind: str) -> dict:
            """What the door and the handoff judge by: the scope's first keys
            (uvicorn builds none for a handshake until its WebSocket protocol runs)."""
            url = httptools.parse_url(self.url)
            path = url.path.decode("latin-1")
            return {
                "type": kind,
                "method": self.parser.get_method().decode("latin-1"),
                "path": urllib.parse.unquote(path) if "%" in path else path,
                "query_string": url.query or b"",
                "client": self.client,
                "headers": self.headers,
            }

        def _write_held(self, data: bytes) -> None:
            self._door_timer = None
            door.let_go()
            self._write_and_close(data)

        def _write_and_close(self, data: bytes) -> None:
            if not self.transport.is_closing():
                self.transport.write(data)
                self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._door_timer is not None:  # the client left, or the server is stopping
                self._door_timer.cancel()
                self._door_timer = None
                door.let_go()
            super().connection_lost(exc)

    return Protocol


def serve_uvicorn(
    application,
    *,
    host: str,
    port: int,
    access_log: bool,
    on_signal: Callable[[], object],
    sock: socket.socket | None = None,
) -> None:
    import uvicorn
    from django.conf import settings

    from herder.asgi import door, handoff

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            _in_thread(on_signal)
            super().handle_exit(sig, frame)

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets)
            if handoff is not None and not self.should_exit:
                # Connections handed here are served as if accepted here.
                handoff.listen(
                    functools.partial(
                        self.config.http_protocol_class,
                        config=self.config,
                        server_state=self.server_state,
                        app_state=self.lifespan.state,
                    )
                )

        async def shutdown(self, sockets=None) -> None:
            if handoff is not None:
                handoff.close()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        application,
        host=host,
        port=port,
        loop="uvloop",
        # httptools, with refusals answered at the door (herder/door.py).
        http=_http_protocol(door, handoff),
        ws=_websocket_protocol(),
        lifespan="off",
        access_log=access_log,
        log_level="info" if access_log else "warning",
        # A larger WebSocket message closes its socket (1009) before it is buffered whole.
        ws_max_size=settings.HERDER_WS_MAX_FRAME,
        # No permessage-deflate (as the original and Daphne): compressing and
        # inflating every relayed frame cost CPU on each hop, and each socket
        # that took it held two zlib contexts.
        ws_per_message_deflate=False,
        # The client's address is the herder's to judge (HERDER_TRUSTED_PROXIES,
        # herder/admission.py): uvicorn's own default believed X-Forwarded-For
        # from any loopback peer, so a local proxy's clients could name themselves.
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )
    Server(config).run(sockets=[sock] if sock is not None else None)


def serve_daphne(
    application,
    *,
    host: str,
    port: int,
    access_log: bool,
    on_signal: Callable[[], object],
    sock: socket.socket | None = None,
) -> None:
    from daphne.access import AccessLogGenerator
    from daphne.endpoints import build_endpoint_description_strings
    from daphne.server import Server
    from django.conf import settings
    from twisted.internet import reactor

    def stop(signum, frame) -> None:
        _in_thread(on_signal)
        reactor.callFromThread(reactor.stop)

    if sock is not None and sock.family != socket.AF_INET:
        # Its fd endpoint string cannot name another address family.
        raise ValueError("Daphne workers listen on IPv4 addresses only: use --server uvicorn")
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    Server(
        application=application,
        # Twisted adopts a copy of the descriptor and closes the one given: the
        # socket object lets go of it first (or it would close a reused number later).
        endpoints=(
            [f"fd:fileno={sock.detach()}"]
            if sock is not None
            else build_endpoint_description_strings(host=host, port=port)
        ),
        action_logger=AccessLogGenerator(sys.stdout) if access_log else None,
        # Minion runs may take the whole time limit.
        http_timeout=None,
        # A larger WebSocket message closes its socket (1009) before it is buffered whole.
        websocket_max_message_size=settings.HERDER_WS_MAX_FRAME,
        websocket_max_frame_size=settings.HERDER_WS_MAX_FRAME,
        signal_handlers=False,
    ).run()


SERVERS = {"uvicorn": serve_uvicorn, "daphne": serve_daphne}
