"""The Swarm runtime (HERDER_RUNTIME=swarm): golems and daemons as Swarm services.

Golems and daemons live long and may run on any node, so each is a service
of one replica on the attachable overlay network HERDER_SWARM_NETWORK (which
the herder's own replicas join), with resources, a restart policy, the
herder's labels and the placement constraints of HERDER_SWARM_CONSTRAINTS.
The herder reaches a service by its name: in `dnsrr` endpoint mode the name
resolves to its task's overlay address (this engine has no IPVS, so virtual
IPs and the routing mesh do not answer). Nothing is published on a host port.

Minions stay on the local engine (the DockerRuntime this class extends): a
service per run would cost seconds, and each herder node keeps its own warm
pool. So every call about a minion (or any handle that is not a service) goes
to DockerRuntime unchanged.

Compared with JupyterHub's SwarmSpawner (one service per server, reached by
service name, polled through its tasks): the same shape, plus adoption,
reaping and metering by labels across nodes (services are listed by label on
any manager), and the engine's restart policy for daemons.

What Swarm does not give (engine 20.10, API 1.41): per-service seccomp
profiles and no-new-privileges (so golems in swarm need
HERDER_GOLEM_SANDBOX=false: Chromium's --no-sandbox inside the confined,
read-only, capability-less container), `host-gateway` extra hosts, and bridge
networks with inter-container traffic off: services on one overlay can reach
each other's ports. See README "Deploy".
"""

from __future__ import annotations

import re
import time
from datetime import datetime

import docker.errors
import docker.types
from django.conf import settings

from herder.errors import RuntimeUnavailable
from herder.runtime import (
    LABEL_INSTANCE,
    LABEL_KIND,
    LABEL_OWNER,
    Attachment,
    ContainerGone,
    ContainerInfo,
    ContainerSpec,
    DockerRuntime,
    Handle,
    _engine_errors,
    deployment_instance,
    tar_of,
)

# The kinds that run as services; every other kind (minions) stays local.
SERVICE_KINDS = ("golem", "daemon")
LABEL_PORTS = "herder.ports"
# Task states of a task Swarm still wants running but that does not run yet:
# reported as "restarting" so that supervisors do not take a restart for a death.
_COMING = {"new", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
_SIZE = re.compile(r"^(\d+)([kmg]?)b?$", re.IGNORECASE)


def _bytes(text: str | None) -> int | None:
    if not text:
        return None
    match = _SIZE.match(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match.group(2).lower()]


def _is_service(handle: Handle) -> bool:
    """Service handles carry a service id (25 characters) or a golem's or
    daemon's name; container ids have 64 hex digits."""
    for value in (handle.id, handle.name):
        if value.startswith(("herder-golem-", "herder-daemon-")):
            return True
    return len(handle.id) == 25 and handle.id.isalnum()


class SwarmRuntime(DockerRuntime):
    """Golems and daemons as Swarm services, minions on the local engine."""

    # --- starting ---------------------------------------------------------------

    def start(self, spec: ContainerSpec, *, files: dict[str, bytes] | None = None, files_at: str = "/minion") -> Handle:
        if spec.kind not in SERVICE_KINDS:
            return super().start(spec, files=files, files_at=files_at)
        if spec.security_opt:
            # Dropping a seccomp profile silently would leave Chromium without
            # the sandbox it was told to use: refuse, loudly.
            raise RuntimeUnavailable(
                "Swarm services take no --security-opt (seccomp profile): "
                "set HERDER_GOLEM_SANDBOX=false with HERDER_RUNTIME=swarm."
            )
        constraints = list(settings.HERDER_SWARM_CONSTRAINTS)
        if spec.volumes:
            # Volumes are node-local in Swarm: the files go into the volume on
            # this node, and the service is pinned to it.
            self._fill_volumes(spec, files or {}, files_at)
            constraints.append(f"node.id=={self._node_id()}")
        elif files:
            raise RuntimeUnavailable("Files for a service need a volume.")
        with _engine_errors(spec.image):
            created = self.client.api.create_service(
                self._task_template(spec, constraints),
                name=spec.name,
                labels=self._labels(spec),
                mode=docker.types.ServiceMode("replicated", replicas=1),
                endpoint_spec=docker.types.EndpointSpec(mode="dnsrr"),
            )
        return Handle(id=created["ID"], name=spec.name or created["ID"])

    def _labels(self, spec: ContainerSpec) -> dict[str, str]:
        return {
            LABEL_INSTANCE: deployment_instance(),
            **spec.labels,
            LABEL_KIND: spec.kind,
            LABEL_OWNER: spec.owner,
            LABEL_PORTS: ",".join(str(p) for p in spec.ports),
        }

    def _task_template(self, spec: ContainerSpec, constraints: list[str]) -> docker.types.TaskTemplate:
        mounts = [docker.types.Mount(target, name, type="volume") for name, target in spec.volumes.items()]
        for target, options in spec.tmpfs.items():
            opts = dict(item.partition("=")[::2] for item in options.split(",") if item)
            mounts.append(
                docker.types.Mount(
                    target,
                    None,
                    type="tmpfs",
                    tmpfs_size=_bytes(opts.get("size")),
                    tmpfs_mode=int(opts["mode"], 8) if "mode" in opts else None,
                )
            )
        container = docker.types.ContainerSpec(
            spec.image,
            # A `docker run` image argument list is the image's CMD, i.e. args.
            args=spec.command,
            env=spec.environment,
            user=spec.user,
            labels=self._labels(spec),
            mounts=mounts,
            open_stdin=spec.stdin,
            read_only=spec.read_only,
            init=True,
            cap_drop=["ALL"] if spec.confined else None,
            cap_add=spec.cap_add or None,
            # host-gateway has no meaning for a task on another node: the
            # herder is reached over the overlay by its service name instead.
            hosts={h: a for h, a in spec.extra_hosts.items() if a != "host-gateway"} or None,
        )
        resources = docker.types.Resources(
            cpu_limit=int(spec.cpus * 1e9) if spec.cpus else None, mem_limit=_bytes(spec.memory)
        )
        if spec.pids:
            resources.setdefault("Limits", {})["Pids"] = spec.pids
        condition = {"always": "any", "unless-stopped": "any", "on-failure": "on-failure"}.get(
            spec.restart or "", "none"
        )
        return docker.types.TaskTemplate(
            container,
            resources=resources,
            restart_policy=docker.types.RestartPolicy(condition=condition, delay=1_000_000_000),
            placement=docker.types.Placement(constraints=constraints) if constraints else None,
            log_driver=None if spec.keep_logs else docker.types.DriverConfig("none"),
            networks=[settings.HERDER_SWARM_NETWORK],
        )

    def _fill_volumes(self, spec: ContainerSpec, files: dict[str, bytes], files_at: str) -> None:
        """Create the spec's volumes on this node and write `files` into the one
        mounted at `files_at`, through a container of the spec's image that never runs."""
        api = self.client.api
        with _engine_errors(spec.image):
            helper = api.create_container(
                spec.image,
                command=["true"],
                network_disabled=True,
                labels={LABEL_INSTANCE: deployment_instance(), LABEL_KIND: "volume-fill"},
                host_config=api.create_host_config(
                    binds={name: {"bind": path, "mode": "rw"} for name, path in spec.volumes.items()}
                ),
            )
        try:
            if files:
                with _engine_errors():
                    api.put_archive(helper["Id"], files_at, tar_of(files))
        finally:
            super().remove(Handle(id=helper["Id"], name=helper["Id"][:12]))

    def _node_id(self) -> str:
        with _engine_errors():
            return self.client.api.info()["Swarm"]["NodeID"]

    # --- the rest of the interface ----------------------------------------------

    def _service(self, handle: Handle) -> dict:
        with _engine_errors():
            return self.client.api.inspect_service(handle.id if len(handle.id) == 25 else handle.name)

    def _tasks(self, *, service: str | None = None) -> list[dict]:
        filters = {"desired-state": "running"}
        if service:
            filters["service"] = service
        with _engine_errors():
            return self.client.api.tasks(filters=filters)

    def stop(self, handle: Handle, *, now: bool = False, grace: float = 10) -> None:
        if not _is_service(handle):
            return super().stop(handle, now=now, grace=grace)
        # A service has no stopped state: scaled to zero its task ends (and
        # poll then answers its exit code).
        try:
            service = self._service(handle)
            with _engine_errors():
                self.client.api.update_service(
                    service["ID"],
                    version=service["Version"]["Index"],
                    mode=docker.types.ServiceMode("replicated", 0),
                    fetch_current_spec=True,
                )
        except ContainerGone:
            pass

    def remove(self, handle: Handle, *, volumes: bool = False) -> None:
        if not _is_service(handle):
            return super().remove(handle, volumes=volumes)
        try:
            with _engine_errors():
                self.client.api.remove_service(handle.id if len(handle.id) == 25 else handle.name)
        except ContainerGone:
            pass

    def poll(self, handle: Handle) -> int | None:
        if not _is_service(handle):
            return super().poll(handle)
        service = self._service(handle)
        state = self._state(self._tasks(service=service["ID"]))
        if state in ("running", "restarting"):
            return None
        with _engine_errors():
            done = self.client.api.tasks(filters={"service": service["ID"]})
        codes = [
            t.get("Status", {}).get("ContainerStatus", {}).get("ExitCode")
            for t in sorted(done, key=lambda t: t.get("UpdatedAt", ""))
        ]
        codes = [c for c in codes if c is not None]
        return int(codes[-1]) if codes else -1

    @staticmethod
    def _state(tasks: list[dict]) -> str:
        states = {t.get("Status", {}).get("State", "") for t in tasks}
        if "running" in states:
            return "running"
        if states & _COMING:
            return "restarting"
        return "exited"

    def published_ports(self, handle: Handle) -> dict[int, int]:
        """A service publishes nothing: its ports are reached on the overlay, so
        each maps to itself (`address` turns it into the task's address)."""
        if not _is_service(handle):
            return super().published_ports(handle)
        labels = self._service(handle)["Spec"].get("Labels") or {}
        return {int(p): int(p) for p in labels.get(LABEL_PORTS, "").split(",") if p}

    def address(self, handle: Handle, port: int, *, published: int | None, host: str) -> tuple[str, int] | None:
        if not _is_service(handle):
            return super().address(handle, port, published=published, host=host)
        # dnsrr: the service's name resolves to its task's overlay address.
        return handle.name, port

    def list(self, *, kind: str | None = None, owner: str | None = None, ours: bool = False) -> list[ContainerInfo]:
        local = (
            []
            if kind in SERVICE_KINDS
            else [info for info in super().list(kind=kind, owner=owner, ours=ours) if info.kind not in SERVICE_KINDS]
        )
        if kind is not None and kind not in SERVICE_KINDS:
            return local
        filters = [LABEL_KIND if kind is None else f"{LABEL_KIND}={kind}"]
        if owner is not None:
            filters.append(f"{LABEL_OWNER}={owner}")
        if ours:
            filters.append(f"{LABEL_INSTANCE}={deployment_instance()}")
        with _engine_errors():
            services = self.client.api.services(filters={"label": filters})
        tasks: dict[str, list[dict]] = {}
        if services:
            for task in self._tasks():
                tasks.setdefault(task.get("ServiceID", ""), []).append(task)
        infos = []
        for service in services:
            labels = service["Spec"].get("Labels") or {}
            if labels.get(LABEL_KIND) not in SERVICE_KINDS:
                continue
            ports = {int(p): int(p) for p in labels.get(LABEL_PORTS, "").split(",") if p}
            infos.append(
                ContainerInfo(
                    handle=Handle(id=service["ID"], name=service["Spec"]["Name"]),
                    kind=labels.get(LABEL_KIND, ""),
                    owner=labels.get(LABEL_OWNER, ""),
                    status=self._state(tasks.get(service["ID"], [])),
                    created=datetime.fromisoformat(service["CreatedAt"][:26].rstrip("Z") + "+00:00"),
                    labels=labels,
                    ports=ports,
                )
            )
        return local + infos

    def attach(self, handle: Handle) -> Attachment:
        """A service's task is attached through its container, which must run on
        this herder's node (daemons are pinned to their volume's node)."""
        if not _is_service(handle):
            return super().attach(handle)
        return super().attach(self._local_container(handle))

    def exec(self, handle: Handle, command: list[str], *, user: str | None = None) -> tuple[int, bytes]:
        if not _is_service(handle):
            return super().exec(handle, command, user=user)
        return super().exec(self._local_container(handle), command, user=user)

    def _local_container(self, handle: Handle) -> Handle:
        service = self._service(handle)
        for _ in range(50):
            for task in self._tasks(service=service["ID"]):
                cid = task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID")
                if cid and task.get("NodeID") == self._node_id():
                    return Handle(id=cid, name=cid[:12])
            time.sleep(0.1)
        raise ContainerGone(f"{handle.name} runs on no task of this node")

    def remove_volume(self, name: str) -> None:
        """A removed service's task container lets go of its volume a moment
        later: wait for that (up to ~10 s) rather than fail with "in use"."""
        for attempt in range(50):
            try:
                return super().remove_volume(name)
            except docker.errors.APIError as exc:
                if exc.response is None or exc.response.status_code != 409 or attempt == 49:
                    raise
                time.sleep(0.2)

    def network_create(self, name: str, *, kind: str, labels: dict[str, str] | None = None) -> str:
        """Golems and daemons join HERDER_SWARM_NETWORK (the herder reaches them
        there); an overlay has no switch for inter-container traffic, so a
        network per daemon would isolate nothing unless every herder replica
        joined each one."""
        if kind in SERVICE_KINDS:
            return settings.HERDER_SWARM_NETWORK
        return super().network_create(name, kind=kind, labels=labels)
