"""The container runtime: the only module that imports docker.

Apps describe a container with a `ContainerSpec` and get back a `Handle`; they
never see the SDK. Every container carries the labels `herder.kind` (minion,
golem, daemon) and `herder.owner`, so the herder can find, account for and
clean up its containers after a restart.

The SDK blocks: from async code call these methods through
`await in_engine_pool(fn, ...)`, a bounded pool (HERDER_DOCKER_THREADS): a
request waiting for the engine is a future, not a thread. Every call to the
engine gives up after HERDER_DOCKER_TIMEOUT seconds (503).
Choose the implementation with `HERDER_RUNTIME`; `get_runtime()` returns it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import select
import socket
import struct
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import docker
import docker.errors
import requests.exceptions
from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from herder.errors import ImageMissing, RuntimeUnavailable
from herder.metrics import count_engine_error

LABEL_KIND = "herder.kind"
LABEL_OWNER = "herder.owner"
LABEL_INSTANCE = "herder.instance"

STDOUT, STDERR = 1, 2


def deployment_instance() -> str:
    """Which herder deployment a container belongs to: HERDER_INSTANCE, else a
    digest of the database's identity, shared by every process on that
    database. Herders on other databases (or test runs) may share the engine:
    they never adopt, reap or restart each other's containers."""
    if settings.HERDER_INSTANCE:
        return settings.HERDER_INSTANCE
    db = settings.DATABASES["default"]
    identity = "|".join(str(db.get(key, "")) for key in ("ENGINE", "HOST", "PORT", "NAME"))
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


class ContainerGone(Exception):
    """The container no longer exists."""


@dataclass
class ContainerSpec:
    """What to run. Limits left None are the engine's defaults."""

    kind: str
    owner: str
    image: str
    name: str | None = None
    command: list[str] | None = None
    environment: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    memory: str | None = None
    cpus: float | None = None
    pids: int | None = None
    # None: the engine's default network; "none": no network at all.
    network: str | None = "none"
    read_only: bool = False
    # mount point -> tmpfs options ("size=64m,mode=1777")
    tmpfs: dict[str, str] = field(default_factory=dict)
    # volume name -> mount point
    volumes: dict[str, str] = field(default_factory=dict)
    # container port -> host port (None: any free one), published on `port_host`
    ports: dict[int, int | None] = field(default_factory=dict)
    port_host: str = "127.0.0.1"
    # Drop every capability and forbid gaining privileges.
    confined: bool = True
    # Capabilities kept all the same (confined drops all others).
    cap_add: list[str] = field(default_factory=list)
    # Keep stdin open for attached clients. With stdin_once the first client's
    # close reaches the container as EOF; without it, clients come and go.
    stdin: bool = False
    stdin_once: bool = True
    auto_remove: bool = False
    restart: str | None = None
    # Minions are read through attach only: keeping logs would let one fill the disk.
    keep_logs: bool = True
    # More `--security-opt` entries, e.g. "seccomp=<profile JSON>" (the API takes
    # the profile's text, not a path).
    security_opt: list[str] = field(default_factory=list)
    # host name -> address added to /etc/hosts ("host-gateway": the host).
    extra_hosts: dict[str, str] = field(default_factory=dict)
    # Size of /dev/shm ("256m"); None: the engine's default.
    shm_size: str | None = None


@dataclass(frozen=True)
class Handle:
    id: str
    name: str


@dataclass(frozen=True)
class ContainerInfo:
    handle: Handle
    kind: str
    owner: str
    status: str
    created: datetime
    labels: dict[str, str]
    # Container port -> host port of the published TCP ports (empty while stopped).
    ports: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class VolumeInfo:
    name: str
    created: datetime | None
    # Bytes in use, when asked for (the engine walks the volume: slow), else None.
    size: int | None = None


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    labels: dict[str, str]


class Attachment:
    """A container's stdin, stdout and stderr over one held socket.

    Without a TTY the engine multiplexes stdout and stderr in frames with an
    8-byte header: stream id, three zero bytes, big-endian length.
    """

    def __init__(self, sock) -> None:
        self._wrapper = sock
        self._sock: socket.socket = getattr(sock, "_sock", sock)
        self._sock.setblocking(True)
        self._buffer = bytearray()
        self._eof = False

    def send(self, data: bytes, *, timeout: float | None = None) -> None:
        """Write to the container's stdin. Raises TimeoutError when it stops reading."""
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(data)
        except socket.timeout as exc:
            raise TimeoutError("the container stopped reading its stdin") from exc

    def read_frame(self, *, timeout: float | None) -> tuple[int, bytes] | None:
        """The next (stream, bytes) frame; None at the end of the stream.

        Raises TimeoutError when no complete frame arrives within `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self._next_frame()
            if frame is not None or self._eof:
                return frame
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self._sock], [], [], remaining)
            if not ready:
                raise TimeoutError
            chunk = self._sock.recv(256 * 1024)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    async def aread_frame(self) -> tuple[int, bytes] | None:
        """read_frame for async code: waits on the event loop, never blocks it."""
        loop = asyncio.get_running_loop()
        self._sock.setblocking(False)
        while True:
            frame = self._next_frame()
            if frame is not None or self._eof:
                return frame
            chunk = await loop.sock_recv(self._sock, 256 * 1024)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True

    async def asend(self, data: bytes) -> None:
        self._sock.setblocking(False)
        await asyncio.get_running_loop().sock_sendall(self._sock, data)

    def _next_frame(self) -> tuple[int, bytes] | None:
        if len(self._buffer) >= 8:
            stream, length = struct.unpack(">BxxxL", self._buffer[:8])
            if len(self._buffer) >= 8 + length:
                data = bytes(self._buffer[8 : 8 + length])
                del self._buffer[: 8 + length]
                return stream, data
        return None

    def is_quiet(self) -> bool:
        """True when nothing waits to be read and the stream is still open."""
        if self._buffer or self._eof:
            return False
        try:
            readable, _, _ = select.select([self._sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        for closable in (self._sock, self._wrapper):
            try:
                closable.close()
            except OSError:
                pass


class Runtime:
    """What the apps need of a container engine. Every method may raise
    `RuntimeUnavailable` (the engine does not answer) or `ImageMissing`."""

    def start(self, spec: ContainerSpec, *, files: dict[str, bytes] | None = None, files_at: str = "/minion") -> Handle:
        """Create and start a container; return its handle. `files` (relative
        name -> bytes) are written under `files_at` before it starts: into the
        image's file system or a volume, not a tmpfs. Nothing is left behind on failure."""
        raise NotImplementedError

    def start_attached(self, spec: ContainerSpec) -> tuple[Handle, Attachment]:
        """Create a container, attach to its streams, then start it, so that no
        output is lost. The caller owns both: close the attachment, remove the
        container."""
        raise NotImplementedError

    def attach(self, handle: Handle) -> Attachment:
        """Attach to a running container's stdin, stdout and stderr."""
        raise NotImplementedError

    def stop(self, handle: Handle, *, now: bool = False, grace: float = 10) -> None:
        """Stop: SIGTERM, then SIGKILL after `grace` seconds, or SIGKILL at once
        with `now`. A container already gone counts as stopped."""
        raise NotImplementedError

    def remove(self, handle: Handle, *, volumes: bool = False) -> None:
        """Kill and remove the container. A container already gone counts as removed."""
        raise NotImplementedError

    def poll(self, handle: Handle) -> int | None:
        """None while the container runs, else its exit code. Raises ContainerGone."""
        raise NotImplementedError

    def published_ports(self, handle: Handle) -> dict[int, int]:
        """Container port -> host port of a running container's published TCP ports."""
        raise NotImplementedError

    def address(self, handle: Handle, port: int, *, published: int | None, host: str) -> tuple[str, int] | None:
        """Where the herder reaches the container's `port`, given what
        `published_ports` said of it (`published`) and the address ports are
        published on (`host`); None when it cannot be reached."""
        raise NotImplementedError

    def list(self, *, kind: str | None = None, owner: str | None = None, ours: bool = False) -> list[ContainerInfo]:
        """The herder's containers, running or not, filtered by label; with
        `ours` only this deployment's (`deployment_instance()`)."""
        raise NotImplementedError

    def put_archive(self, handle: Handle, path: str, files: dict[str, bytes]) -> None:
        """Write files (relative name -> bytes) under `path` in the container.
        Not into a tmpfs mount: the engine cannot."""
        raise NotImplementedError

    def get_file(self, handle: Handle, path: str, *, limit: int) -> bytes | None:
        """One file's bytes, or None when it is missing or larger than `limit`."""
        raise NotImplementedError

    def logs(self, handle: Handle, *, follow: bool = False) -> Iterator[bytes]:
        """The container's output as kept by the engine."""
        raise NotImplementedError

    def image_exists(self, image: str) -> bool:
        raise NotImplementedError

    def remove_volume(self, name: str) -> None:
        """Delete a volume; one already gone counts as deleted."""
        raise NotImplementedError

    def volumes(self, *, prefix: str, sizes: bool = False) -> list[VolumeInfo]:
        """The engine's volumes whose name starts with `prefix`; with `sizes`,
        each one's bytes in use (the engine measures them all: seconds)."""
        raise NotImplementedError

    def exec(self, handle: Handle, command: list[str], *, user: str | None = None) -> tuple[int, bytes]:
        """Run `command` in a running container; return its exit code and its
        stdout and stderr together. Bound its time inside the command
        (`timeout 5 ...`): the call waits for it. Raises ContainerGone."""
        raise NotImplementedError

    def set_cpu_weight(self, handle: Handle, weight: int) -> None:
        """The container's share of CPU time against the others when the CPU
        is contended (Docker's cpu_shares: 1024 by default, 2 the least); no cap
        when it is not. Raises ContainerGone."""
        raise NotImplementedError

    def network_create(self, name: str, *, kind: str, labels: dict[str, str] | None = None) -> str:
        """Create (or find) the bridge network `name` with inter-container traffic
        off, labelled like containers (`herder.kind`, `herder.instance`); its
        containers still reach outside through the engine's NAT. Returns its name."""
        raise NotImplementedError

    def network_remove(self, name: str) -> bool:
        """Delete a network. One already gone counts as deleted (True); one that
        still has containers attached is kept (False)."""
        raise NotImplementedError

    def networks(self, *, kind: str | None = None, ours: bool = False) -> list[NetworkInfo]:
        """The herder's networks, filtered by label as `list` filters containers."""
        raise NotImplementedError


@contextmanager
def _engine_errors(image: str | None = None):
    """Turn the SDK's failures into the herder's own errors."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise ImageMissing(f"Image {image or ''} is not present; build it with deploy/build-images.sh.") from exc
    except docker.errors.NotFound as exc:
        raise ContainerGone(str(exc)) from exc
    except docker.errors.APIError as exc:
        if exc.response is not None and exc.response.status_code >= 500:
            count_engine_error("server_error")
            raise RuntimeUnavailable(f"The container engine failed: {exc.explanation}") from exc
        raise
    except (docker.errors.DockerException, requests.exceptions.ConnectionError) as exc:
        count_engine_error("unreachable")
        raise RuntimeUnavailable() from exc


class DockerRuntime(Runtime):
    """The Runtime on a Docker engine (local, or DOCKER_HOST)."""

    def __init__(self) -> None:
        self._client: docker.DockerClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> docker.DockerClient:
        # Made on first use, and again after a failure: the engine may come back.
        with self._lock:
            if self._client is None:
                with _engine_errors():
                    timeout = settings.HERDER_DOCKER_TIMEOUT
                    if settings.DOCKER_HOST:
                        self._client = docker.DockerClient(base_url=settings.DOCKER_HOST, timeout=timeout)
                    else:
                        self._client = docker.from_env(timeout=timeout)
            return self._client

    def _create(self, spec: ContainerSpec) -> Handle:
        labels = {LABEL_INSTANCE: deployment_instance(), **spec.labels, LABEL_KIND: spec.kind, LABEL_OWNER: spec.owner}
        api = self.client.api
        host_config = api.create_host_config(
            auto_remove=spec.auto_remove,
            init=True,
            mem_limit=spec.memory,
            # No swap beyond the memory limit.
            memswap_limit=spec.memory,
            nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
            pids_limit=spec.pids,
            network_mode=spec.network,
            read_only=spec.read_only,
            tmpfs=spec.tmpfs or None,
            binds={name: {"bind": path, "mode": "rw"} for name, path in spec.volumes.items()} or None,
            port_bindings={port: (spec.port_host, host) for port, host in spec.ports.items()} or None,
            cap_drop=["ALL"] if spec.confined else None,
            cap_add=spec.cap_add or None,
            security_opt=(["no-new-privileges"] if spec.confined else []) + spec.security_opt or None,
            extra_hosts=spec.extra_hosts or None,
            shm_size=spec.shm_size,
            restart_policy={"Name": spec.restart} if spec.restart else None,
            log_config=None if spec.keep_logs else {"Type": "none", "Config": {}},
        )
        with _engine_errors(spec.image):
            created = api.create_container(
                spec.image,
                command=spec.command,
                name=spec.name,
                user=spec.user,
                environment=spec.environment,
                labels=labels,
                stdin_open=spec.stdin,
                # The SDK sets StdinOnce for a container that is not detached.
                detach=not (spec.stdin and spec.stdin_once),
                tty=False,
                ports=list(spec.ports) or None,
                network_disabled=spec.network == "none",
                host_config=host_config,
            )
        cid = created["Id"]
        return Handle(id=cid, name=spec.name or cid[:12])

    def start(self, spec: ContainerSpec, *, files: dict[str, bytes] | None = None, files_at: str = "/minion") -> Handle:
        handle = self._create(spec)
        try:
            with _engine_errors(spec.image):
                if files:
                    self.client.api.put_archive(handle.id, files_at, tar_of(files))
                self.client.api.start(handle.id)
        except BaseException:
            self.remove(handle)
            raise
        return handle

    def start_attached(self, spec: ContainerSpec) -> tuple[Handle, Attachment]:
        handle = self._create(spec)
        attachment = None
        try:
            attachment = self.attach(handle)
            with _engine_errors(spec.image):
                self.client.api.start(handle.id)
        except BaseException:
            if attachment is not None:
                attachment.close()
            self.remove(handle)
            raise
        return handle, attachment

    def attach(self, handle: Handle) -> Attachment:
        with _engine_errors():
            sock = self.client.api.attach_socket(handle.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
        return Attachment(sock)

    def stop(self, handle: Handle, *, now: bool = False, grace: float = 10) -> None:
        try:
            with _engine_errors():
                if now:
                    self.client.api.kill(handle.id)
                else:
                    self.client.api.stop(handle.id, timeout=int(grace))
        except ContainerGone:
            pass
        except docker.errors.APIError as exc:
            # 409: not running, which is what we wanted.
            if exc.response is None or exc.response.status_code != 409:
                raise

    def remove(self, handle: Handle, *, volumes: bool = False) -> None:
        try:
            with _engine_errors():
                self.client.api.remove_container(handle.id, force=True, v=volumes)
        except ContainerGone:
            pass
        except docker.errors.APIError as exc:
            # 409: removal already under way (auto-remove); it will finish.
            if exc.response is None or exc.response.status_code != 409:
                raise

    def set_cpu_weight(self, handle: Handle, weight: int) -> None:
        with _engine_errors():
            self.client.api.update_container(handle.id, cpu_shares=weight)

    def poll(self, handle: Handle) -> int | None:
        with _engine_errors():
            state = self.client.api.inspect_container(handle.id)["State"]
        if state.get("Running") or state.get("Restarting"):
            return None
        return int(state.get("ExitCode", -1))

    def published_ports(self, handle: Handle) -> dict[int, int]:
        with _engine_errors():
            ports = self.client.api.inspect_container(handle.id)["NetworkSettings"]["Ports"] or {}
        published = {}
        for key, bindings in ports.items():
            port, _, proto = key.partition("/")
            if proto == "tcp" and bindings:
                published[int(port)] = int(bindings[0]["HostPort"])
        return published

    def address(self, handle: Handle, port: int, *, published: int | None, host: str) -> tuple[str, int] | None:
        # A local container is reached on its published host port.
        return (host, int(published)) if published else None

    def list(self, *, kind: str | None = None, owner: str | None = None, ours: bool = False) -> list[ContainerInfo]:
        filters = [LABEL_KIND if kind is None else f"{LABEL_KIND}={kind}"]
        if owner is not None:
            filters.append(f"{LABEL_OWNER}={owner}")
        if ours:
            filters.append(f"{LABEL_INSTANCE}={deployment_instance()}")
        with _engine_errors():
            rows = self.client.api.containers(all=True, filters={"label": filters})
        return [
            ContainerInfo(
                handle=Handle(id=row["Id"], name=(row.get("Names") or ["/" + row["Id"][:12]])[0].lstrip("/")),
                kind=row["Labels"].get(LABEL_KIND, ""),
                owner=row["Labels"].get(LABEL_OWNER, ""),
                status=row.get("State", ""),
                created=datetime.fromtimestamp(row["Created"]).astimezone(),
                labels=row["Labels"],
                ports={
                    int(p["PrivatePort"]): int(p["PublicPort"])
                    for p in row.get("Ports") or ()
                    if p.get("Type") == "tcp" and p.get("PublicPort")
                },
            )
            for row in rows
        ]

    def put_archive(self, handle: Handle, path: str, files: dict[str, bytes]) -> None:
        with _engine_errors():
            self.client.api.put_archive(handle.id, path, tar_of(files))

    def get_file(self, handle: Handle, path: str, *, limit: int) -> bytes | None:
        try:
            with _engine_errors():
                stream, stat = self.client.api.get_archive(handle.id, path)
                if stat.get("size", 0) > limit:
                    return None
                data = b"".join(stream)
        except ContainerGone:
            return None
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = archive.next()
            if member is None or not member.isfile():
                return None
            extracted = archive.extractfile(member)
            return extracted.read() if extracted else None

    def logs(self, handle: Handle, *, follow: bool = False) -> Iterator[bytes]:
        with _engine_errors():
            yield from self.client.api.logs(handle.id, stream=True, follow=follow)

    def image_exists(self, image: str) -> bool:
        try:
            with _engine_errors(image):
                self.client.api.inspect_image(image)
        except (ContainerGone, ImageMissing):
            return False
        return True

    def remove_volume(self, name: str) -> None:
        try:
            with _engine_errors():
                self.client.api.remove_volume(name, force=True)
        except ContainerGone:
            pass

    def volumes(self, *, prefix: str, sizes: bool = False) -> list[VolumeInfo]:
        with _engine_errors():
            if sizes:
                listed = self.client.api.df().get("Volumes") or []
            else:
                listed = self.client.api.volumes().get("Volumes") or []
        found = []
        for volume in listed:
            if not volume["Name"].startswith(prefix):
                continue
            created = volume.get("CreatedAt")
            size = (volume.get("UsageData") or {}).get("Size") if sizes else None
            found.append(
                VolumeInfo(
                    name=volume["Name"],
                    created=_parse_time(created) if created else None,
                    size=size if size is None or size >= 0 else None,
                )
            )
        return sorted(found, key=lambda v: v.name)

    def exec(self, handle: Handle, command: list[str], *, user: str | None = None) -> tuple[int, bytes]:
        with _engine_errors():
            created = self.client.api.exec_create(handle.id, command, stdout=True, stderr=True, user=user or "")
            output = self.client.api.exec_start(created["Id"])
            code = self.client.api.exec_inspect(created["Id"])["ExitCode"]
        return int(code if code is not None else -1), output

    def network_create(self, name: str, *, kind: str, labels: dict[str, str] | None = None) -> str:
        all_labels = {LABEL_INSTANCE: deployment_instance(), **(labels or {}), LABEL_KIND: kind}
        try:
            with _engine_errors():
                self.client.api.create_network(
                    name,
                    driver="bridge",
                    check_duplicate=True,
                    labels=all_labels,
                    # Containers on it cannot reach each other (iptables DROP
                    # between its ports), only the outside through NAT.
                    options={"com.docker.network.bridge.enable_icc": "false"},
                )
        except docker.errors.APIError as exc:
            # 409: it exists (a spawn before this one made it): use it. Others
            # (the address pools are exhausted) are the engine's to fix: 503.
            if exc.response is None or exc.response.status_code != 409:
                raise RuntimeUnavailable(f"The engine could not create network {name}: {exc.explanation}") from exc
        return name

    def network_remove(self, name: str) -> bool:
        try:
            with _engine_errors():
                self.client.api.remove_network(name)
        except ContainerGone:
            return True
        except docker.errors.APIError as exc:
            # 403/409: containers are still attached.
            if exc.response is not None and exc.response.status_code in (403, 409):
                return False
            raise
        except RuntimeUnavailable as exc:
            # 20.10 answers 500 "has active endpoints" for a network in use.
            if "active endpoints" in str(exc):
                return False
            raise
        return True

    def networks(self, *, kind: str | None = None, ours: bool = False) -> list[NetworkInfo]:
        filters = [LABEL_KIND if kind is None else f"{LABEL_KIND}={kind}"]
        if ours:
            filters.append(f"{LABEL_INSTANCE}={deployment_instance()}")
        with _engine_errors():
            rows = self.client.api.networks(filters={"label": filters})
        return [NetworkInfo(name=row["Name"], labels=row.get("Labels") or {}) for row in rows]


def _parse_time(text: str) -> datetime | None:
    """The engine's RFC 3339 times ("2026-12-01T02:27:50Z" or with an offset)."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def tar_of(files: dict[str, bytes], *, mode: int = 0o644) -> bytes:
    """A tar archive of relative name -> bytes, folders made as needed."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            info.mtime = int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()
_engine_pool: ThreadPoolExecutor | None = None


async def in_engine_pool(fn: Callable, /, *args, **kwargs):
    """`fn(*args, **kwargs)` (a blocking runtime call) on the engine's bounded
    thread pool; callers beyond its HERDER_DOCKER_THREADS threads wait in
    its queue as futures. No database work here: the pool's threads are
    not Django's."""
    global _engine_pool
    with _runtime_lock:
        if _engine_pool is None:
            _engine_pool = ThreadPoolExecutor(settings.HERDER_DOCKER_THREADS, thread_name_prefix="herder-engine")
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_engine_pool, lambda: fn(*args, **kwargs))


def get_runtime() -> Runtime:
    """The configured runtime, one per process."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = import_string(settings.HERDER_RUNTIME)()
        return _runtime


def _forget_runtime(*, setting: str, **kwargs) -> None:
    global _runtime
    if setting in ("HERDER_RUNTIME", "DOCKER_HOST", "HERDER_DOCKER_TIMEOUT"):
        with _runtime_lock:
            _runtime = None


setting_changed.connect(_forget_runtime)
