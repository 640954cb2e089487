"""A TCP relay for Swarm without IPVS (deploy/stack.yml's `front`, and tests).

This engine's kernel has no IPVS, so neither a service's virtual IP nor the
routing mesh answers; the herder's replicas are reached by their task
addresses (`tasks.<service>`, endpoint_mode dnsrr). The relay listens on
ports and forwards each connection, bytes both ways (HTTP and WebSockets
alike), to a task address resolved anew for every connection:

    python3 relay.py 8000=tasks.herder:8000          # round robin over the tasks
    python3 relay.py 9001=tasks.herder:8000#0 9002=tasks.herder:8000#1
                                                    # the first / second task (sorted)

The herder sees the relay's address as the client's: list the relay in
HERDER_TRUSTED_PROXIES only if it set X-Forwarded-For, which it does not;
in production put an HTTP proxy that does (Traefik, nginx) in its place.
"""

import asyncio
import ipaddress
import itertools
import socket
import sys

_turn = itertools.count()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except OSError:
            pass


async def _addresses(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos}, key=ipaddress.ip_address)


def _serve(host: str, port: int, index: int | None):
    async def handle(client_reader, client_writer):
        try:
            addresses = await _addresses(host, port)
            if index is not None and index >= len(addresses):
                raise OSError(f"no task #{index} of {host}")
            address = addresses[index if index is not None else next(_turn) % len(addresses)]
            upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout=5)
        except (OSError, TimeoutError, IndexError, ZeroDivisionError):
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    return handle


async def main(routes: list[str]) -> None:
    servers = []
    for route in routes:
        listen, _, target = route.partition("=")
        target, _, index = target.partition("#")
        host, _, port = target.rpartition(":")
        servers.append(
            await asyncio.start_server(_serve(host, int(port), int(index) if index else None), "0.0.0.0", int(listen))
        )
    print("relay: listening", " ".join(routes), flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
