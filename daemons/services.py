"""Daemons: long-lived containers owned by accounts and paid for in credits."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count
from django.utils import timezone
from rest_framework.exceptions import NotFound

from accounts.models import Account
from accounts.services import account_balance, credits_spend
from daemons.models import Daemon
from daemons.proxy import forget_target
from herder import supervisor
from herder.errors import BadInput, DaemonBusy, ImageNotAllowed, InsufficientCredits, RuntimeUnavailable
from herder.files import check_files
from herder.runtime import ContainerGone, ContainerSpec, Handle, deployment_instance, get_runtime

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
State = Daemon.State


def check_daemon_name(name: str) -> str:
    # fullmatch: match() lets "$" match before a final newline ("echo\n" passed).
    if not NAME.fullmatch(name or ""):
        raise BadInput("A daemon name is 1 to 63 of a-z, 0-9, '_', '.', '-', starting with a letter or digit.")
    return name


def parse_ports(raw: str | list | None) -> list[int]:
    """A JSON list of port numbers, as numbers or strings. Raises BadInput."""
    if raw in (None, ""):
        return []
    try:
        values = json.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, RecursionError) as exc:  # "[[[[..." recurses past Python's limit
        raise BadInput(f"ports is not JSON: {exc}.", code="bad_ports") from exc
    if not isinstance(values, list):
        raise BadInput('ports must be a JSON list, e.g. [8080] or ["80", "443"].', code="bad_ports")
    if len(values) > settings.HERDER_DAEMON_MAX_PORTS:
        raise BadInput(f"At most {settings.HERDER_DAEMON_MAX_PORTS} ports.", code="bad_ports")
    ports = []
    for value in values:
        text = str(value).removesuffix("/tcp")
        # ASCII digits only: str.isdigit() also takes "²" (int() then fails: a 500)
        # and "８０" (which the schema's pattern does not).
        if isinstance(value, bool) or not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
            raise BadInput(f"{value!r} is not a port number (1-65535).", code="bad_ports")
        if int(text) not in ports:
            ports.append(int(text))
    return ports


def check_image(image: str) -> str:
    allowed = settings.HERDER_DAEMON_IMAGES
    if not image:
        raise ImageNotAllowed("No image given.")
    if "*" not in allowed and image not in allowed:
        shown = ", ".join(allowed) or "none"
        raise ImageNotAllowed(f"Image {image!r} is not allowed here; allowed: {shown}.")
    if not get_runtime().image_exists(image):
        raise ImageNotAllowed(f"Image {image!r} is not present on this herder and cannot be pulled.")
    return image


# A spawn that claimed a daemon this long ago without finishing belongs to a
# herder process that died: another spawn may take the daemon over, and the
# supervisor adopts or removes what it left. Longer than any healthy spawn
# (a few Docker calls of at most 30 s each on a loaded engine).
SPAWN_STALE = timedelta(seconds=120)
LABEL_DAEMON = "herder.daemon"
LABEL_DAEMON_ID = "herder.daemon.id"


def container_name(daemon: Daemon) -> str:
    """One name per (deployment, account, daemon name): the engine itself refuses
    a second container of one daemon, whatever races above it."""
    account = hashlib.sha256(f"{deployment_instance()}:{daemon.owner_id}".encode()).hexdigest()[:12]
    return f"herder-daemon-{account}-{daemon.name}"


def host_label(name: str, full_name: str) -> str:
    """The daemon's origin's DNS label: its name made DNS-safe, then a digest of
    its full name (which holds the token's jti), so it is as hard to guess as
    the path route's Name and changes with it."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name).strip("-")[:40].strip("-") or "d"
    return f"{slug}-{hashlib.sha256(full_name.encode()).hexdigest()[:16]}"


def daemon_spec(daemon: Daemon) -> ContainerSpec:
    return ContainerSpec(
        kind="daemon",
        owner=daemon.owner.email,
        image=daemon.image,
        name=container_name(daemon),
        labels={LABEL_DAEMON: daemon.full_name, LABEL_DAEMON_ID: str(daemon.pk)},
        memory=settings.HERDER_DAEMON_MEMORY,
        cpus=settings.HERDER_DAEMON_CPUS,
        pids=settings.HERDER_DAEMON_PIDS,
        # Its own bridge, inter-container traffic off: no other tenant on it.
        network=container_name(daemon),
        volumes={daemon.volume: "/minion"},
        ports={port: None for port in daemon.ports},
        port_host=settings.HERDER_DAEMON_PORT_HOST,
        confined=settings.HERDER_DAEMON_CONFINED,
        stdin=True,
        stdin_once=False,
        restart=settings.HERDER_DAEMON_RESTART,
    )


def daemon_spawn(*, account, jti: str, name: str, image: str, ports: list[int], files: dict[str, bytes]) -> Daemon:
    """Start the account's daemon `name`, or restart it when it exists.

    Files are written into its volume at /minion, which outlives restarts.
    One spawn at a time owns a daemon: a concurrent one answers DaemonBusy
    (409), never a second container.
    Raises BadInput, ImageNotAllowed, PayloadTooLarge, InsufficientCredits,
    DaemonBusy, RuntimeUnavailable.
    """
    check_daemon_name(name)
    check_files(files)
    check_image(image)
    if account_balance(account) <= 0:
        raise InsufficientCredits("The account has no credits left.")
    daemon, claim, old = _claim(account=account, jti=jti, name=name, image=image, ports=ports)
    forget_target(daemon)
    runtime = get_runtime()
    cname = container_name(daemon)
    handle = None
    try:
        # The previous container goes, by id and by name (a leftover of a
        # spawn whose herder died has the name but no row pointing at it).
        if old:
            runtime.remove(Handle(id=old, name=cname))
        _free_name(runtime, cname)
        runtime.network_create(cname, kind="daemon", labels={LABEL_DAEMON_ID: str(daemon.pk)})
        handle = runtime.start(daemon_spec(daemon), files=files)
        published = runtime.published_ports(handle)
    except Exception:
        if handle is not None:
            runtime.remove(handle)
        failed = Daemon.objects.filter(pk=daemon.pk, claim=claim).update(
            state=State.FAILED, stopped=timezone.now(), claim=""
        )
        if not failed:
            raise DaemonBusy("The daemon was stopped or taken over while it started.") from None
        raise
    now = timezone.now()
    # Conditional on the claim: a kill (or the supervisor at zero credits)
    # while it started wins, and this container must not outlive it.
    recorded = Daemon.objects.filter(pk=daemon.pk, claim=claim, state=State.STARTING).update(
        container_id=handle.id,
        host_ports={str(port): host for port, host in published.items()},
        state=State.RUNNING,
        started=now,
        metered_until=now,
        claim="",
    )
    if not recorded:
        runtime.remove(handle)
        raise DaemonBusy("The daemon was stopped or taken over while it started.")
    forget_target(daemon)
    supervisor.wake()  # its account runs out sooner now
    return Daemon.objects.select_related("owner").get(pk=daemon.pk)


def _free_name(runtime, cname: str) -> None:
    """Remove the container named `cname` and wait until the engine has let go of
    the name. A removal already under way (the supervisor removing the daemon's
    dead container at the same moment) makes remove() return at once, and
    creating the new container then failed on the name: a 500, found by
    Schemathesis (tests/herder/test_schemathesis.py). Raises RuntimeUnavailable
    when the name is still taken after HERDER_DOCKER_TIMEOUT."""
    handle = Handle(id=cname, name=cname)
    deadline = time.monotonic() + settings.HERDER_DOCKER_TIMEOUT
    while True:
        runtime.remove(handle)
        try:
            runtime.poll(handle)
        except ContainerGone:
            return
        if time.monotonic() > deadline:
            raise RuntimeUnavailable(f"The engine did not remove container {cname} in time.")
        time.sleep(0.05)


def _claim(*, account, jti: str, name: str, image: str, ports: list[int]) -> tuple[Daemon, str, str]:
    """Make the daemon's row STARTING under a fresh claim; return the row, the
    claim and the container it had. Raises DaemonBusy while another spawn
    holds a fresh claim."""
    claim, now = secrets.token_hex(16), timezone.now()
    full_name = f"{name}-{jti}"
    fields = {
        "full_name": full_name,
        "host_label": host_label(name, full_name),
        "image": image,
        "ports": ports,
        "host_ports": {},
        "state": State.STARTING,
        "container_id": "",
        "stopped": None,
        "claim": claim,
        "claimed": now,
        # A wiped volume is made anew, empty, by the engine at the start.
        "volume_removed": None,
    }
    try:
        with transaction.atomic():
            daemon = Daemon.objects.create(
                owner=account,
                name=name,
                # The volume outlives restarts and kills without wipe: named once.
                volume=f"herder-daemon-{secrets.token_hex(6)}-{name}",
                **fields,
            )
        return daemon, claim, ""
    except IntegrityError:
        pass  # it exists (or a concurrent spawn just made it): take it over below
    with transaction.atomic():
        daemon = Daemon.objects.select_for_update().select_related("owner").filter(owner=account, name=name).first()
        if daemon is None:
            raise DaemonBusy("The daemon is being spawned or killed; try again.")
        if daemon.state == State.STARTING and daemon.claimed and now - daemon.claimed < SPAWN_STALE:
            raise DaemonBusy(f"Daemon {name!r} is starting; try again in a moment.")
        old = daemon.container_id
        forget_target(daemon)  # its current Name and origin stop answering
        if old and daemon.is_running:
            _charge(daemon, until=now)
        # Conditional: of spawns that read the same row, one wins (SQLite has
        # no SELECT FOR UPDATE; this holds on every database).
        won = Daemon.objects.filter(pk=daemon.pk, state=daemon.state, claim=daemon.claim, container_id=old).update(
            **fields
        )
        if not won:
            raise DaemonBusy(f"Daemon {name!r} is starting; try again in a moment.")
    daemon.refresh_from_db()
    return daemon, claim, old


def daemon_get(*, account, name: str) -> Daemon:
    """The account's daemon by its name or its full name. Raises NotFound,
    also for another account's daemon."""
    daemon = (
        Daemon.objects.filter(owner=account, name=name).first()
        or Daemon.objects.filter(owner=account, full_name=name).first()
    )
    if daemon is None or daemon.state == State.KILLED:
        raise NotFound(f"No daemon {name!r}.")
    return daemon


def daemon_list(*, account) -> list[Daemon]:
    return list(Daemon.objects.filter(owner=account).exclude(state=State.KILLED))


def daemon_kill(*, account, name: str, wipe: bool = False) -> Daemon:
    """Stop and remove the daemon's container, charging it up to now; with
    `wipe` its volume goes too, also when the daemon was killed before (its
    owner may still wipe what it left). Raises NotFound."""
    try:
        daemon = daemon_get(account=account, name=name)
    except NotFound:
        killed = _killed(account=account, name=name) if wipe else None
        if killed is None:
            raise
        return daemon_wipe_volume(killed)
    return daemon_stop(daemon, state=State.KILLED, wipe=wipe)


def _killed(*, account, name: str) -> Daemon | None:
    query = Daemon.objects.filter(owner=account, state=State.KILLED, volume_removed__isnull=True)
    return query.filter(name=name).first() or query.filter(full_name=name).first()


def daemon_wipe_volume(daemon: Daemon) -> Daemon:
    """Remove a stopped daemon's volume (its files). Raises DaemonBusy while
    it runs: stop it first."""
    if daemon.is_running:
        raise DaemonBusy(f"Daemon {daemon.name!r} is {daemon.state}; stop it before wiping its volume.")
    get_runtime().remove_volume(daemon.volume)
    Daemon.objects.filter(pk=daemon.pk).update(volume_removed=timezone.now())
    daemon.refresh_from_db()
    return daemon


def daemon_volumes(*, sizes: bool = True) -> list[dict]:
    """The engine's daemon volumes with their daemon (None when no row names
    it), owner, state and size in bytes: the admin's volume page."""
    infos = get_runtime().volumes(prefix="herder-daemon-", sizes=sizes)
    daemons = {d.volume: d for d in Daemon.objects.filter(volume__in=[i.name for i in infos]).select_related("owner")}
    return [
        {"name": info.name, "created": info.created, "size": info.size, "daemon": daemons.get(info.name)}
        for info in infos
    ]


def daemon_reap_volumes() -> int:
    """A supervisor duty: remove the volumes of daemons stopped longer than
    HERDER_DAEMON_VOLUME_RETENTION ago. Returns how many went.

    Volumes no row names are left alone: they carry no deployment label (the
    engine makes them from the container's mounts), so they may be another
    herder's on a shared engine; the admin's volume page shows them."""
    retention = settings.HERDER_DAEMON_VOLUME_RETENTION
    if retention.total_seconds() <= 0:
        return 0
    cutoff = timezone.now() - retention
    reaped = 0
    runtime = get_runtime()
    for daemon in Daemon.objects.filter(volume_removed__isnull=True, stopped__lt=cutoff).exclude(
        state__in=[State.RUNNING, State.STARTING]
    ):
        runtime.remove_volume(daemon.volume)
        Daemon.objects.filter(pk=daemon.pk).update(volume_removed=timezone.now())
        reaped += 1
    if reaped:
        logger.info("removed %d daemon volumes kept past their retention", reaped)
    return reaped


def daemon_stop(daemon: Daemon, *, state: str, wipe: bool = False) -> Daemon:
    """Charge up to now, then stop and remove the container and its network;
    the row takes `state`. A spawn in progress loses its claim and removes
    what it started."""
    with transaction.atomic():
        daemon = Daemon.objects.select_for_update().select_related("owner").get(pk=daemon.pk)
        if daemon.is_running:
            _charge(daemon, until=timezone.now())
        container, daemon.container_id = daemon.container_id, ""
        daemon.state, daemon.stopped, daemon.claim = state, timezone.now(), ""
        daemon.save()
    forget_target(daemon)
    supervisor.wake()  # its account's other daemons run out later now
    runtime = get_runtime()
    if container:
        runtime.remove(Handle(id=container, name=container))
    runtime.network_remove(container_name(daemon))
    if wipe:
        runtime.remove_volume(daemon.volume)
        Daemon.objects.filter(pk=daemon.pk).update(volume_removed=timezone.now())
        daemon.volume_removed = timezone.now()
    return daemon


def daemon_delete(daemon: Daemon) -> None:
    """Remove a daemon for good (the admin's delete): stop it through
    daemon_stop (charged to this moment), delete its volume, which nothing
    could reach without the row, then the row."""
    daemon_stop(daemon, state=State.KILLED, wipe=True)
    Daemon.objects.filter(pk=daemon.pk).delete()


def daemon_refresh_target(full_name: str = "", label: str = "") -> tuple[str, int] | None:
    """Ask the engine where the running daemon's first port is published now
    (Docker publishes new host ports when it restarts a crashed daemon) and
    record it. Returns (host, port) or None."""
    query = Daemon.objects.filter(state=State.RUNNING).exclude(container_id="")
    daemon = (query.filter(full_name=full_name) if full_name else query.filter(host_label=label)).first()
    if daemon is None or daemon.first_port is None:
        return None
    try:
        published = get_runtime().published_ports(Handle(id=daemon.container_id, name=daemon.full_name))
    except ContainerGone:
        return None
    host_ports = {str(port): host for port, host in published.items()}
    if host_ports and host_ports != daemon.host_ports:
        Daemon.objects.filter(pk=daemon.pk, container_id=daemon.container_id).update(host_ports=host_ports)
    return daemon_address(daemon, host_ports)


def daemon_address(daemon: Daemon, host_ports: dict | None = None) -> tuple[str, int] | None:
    """Where the proxy reaches the daemon's first port: the runtime says (a
    published host port locally, the service's overlay address in Swarm)."""
    published = (daemon.host_ports if host_ports is None else host_ports).get(str(daemon.first_port))
    if published is None:
        return None
    cname = container_name(daemon)
    return get_runtime().address(
        Handle(id=daemon.container_id, name=cname), daemon.first_port, published=int(published), host=proxy_host()
    )


def proxy_host() -> str:
    host = settings.HERDER_DAEMON_PORT_HOST
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


def _charge(daemon: Daemon, *, until: datetime) -> int:
    """Spend the credits of the whole seconds run since the last charge; call
    inside a transaction holding the daemon's row. Returns what was spent."""
    if daemon.metered_until is None:
        daemon.metered_until = until
        daemon.save(update_fields=["metered_until"])
        return 0
    seconds = int((until - daemon.metered_until).total_seconds())
    if seconds <= 0:
        return 0
    spent = credits_spend(
        account=daemon.owner,
        amount=seconds * settings.HERDER_DAEMON_COST_PER_SECOND,
        subject=daemon.full_name,
        note="running, metered by the hour",
        # The hour the charged seconds start in: its row grows all hour long.
        hour=daemon.metered_until.replace(minute=0, second=0, microsecond=0),
    )
    daemon.metered_until += timedelta(seconds=seconds)
    daemon.credits_used += spent
    daemon.save(update_fields=["metered_until", "credits_used"])
    return spent


def daemon_charge(daemon: Daemon, *, until: datetime) -> Daemon | None:
    """Charge a running daemon up to `until` under its row's lock; None when
    it no longer runs. The supervisor's metering (and the ledger benchmark's)."""
    with transaction.atomic():
        daemon = Daemon.objects.select_for_update().select_related("owner").get(pk=daemon.pk)
        if daemon.state != State.RUNNING:
            return None
        _charge(daemon, until=until)
    return daemon


def daemons_exhausted() -> set[int]:
    """Accounts that cannot pay one more second of their running daemons
    (metering charges whole seconds, so a few credits may be left over)."""
    running = Daemon.objects.filter(state=State.RUNNING).order_by().values("owner_id").annotate(n=Count("pk"))
    balances = dict(Account.objects.filter(pk__in=[r["owner_id"] for r in running]).values_list("pk", "balance"))
    cost = settings.HERDER_DAEMON_COST_PER_SECOND
    return {r["owner_id"] for r in running if balances.get(r["owner_id"], 0) < r["n"] * cost}


def daemons_run_out(*, now: datetime) -> float | None:
    """Seconds from `now` to the earliest moment an account with running
    daemons reaches zero, or None when none runs: the supervisor wakes then
    to charge and stop, instead of at its next pass.

    An account's daemons d, metered up to mu_d, cost c per second each; its
    balance b runs out at t where sum over d of c * (t - mu_d) = b, so
    t = (b / c + sum mu_d) / n."""
    cost = settings.HERDER_DAEMON_COST_PER_SECOND
    if cost <= 0:
        return None
    marks: dict[int, list[float]] = {}
    for owner_id, mark in Daemon.objects.filter(state=State.RUNNING).values_list("owner_id", "metered_until"):
        marks.setdefault(owner_id, []).append((mark or now).timestamp())
    if not marks:
        return None
    balances = dict(Account.objects.filter(pk__in=marks).values_list("pk", "balance"))
    earliest = min((balances.get(pk, 0) / cost + sum(ms)) / len(ms) for pk, ms in marks.items())
    return max(0.0, earliest - now.timestamp())


def daemon_supervise() -> supervisor.NextPass | None:
    """One supervisor pass over this deployment's daemons: notice dead
    containers, adopt or remove containers no row owns, follow ports Docker
    published anew, charge, stop the daemons of accounts at zero, and remove
    networks no daemon uses.

    Costs two engine listings plus a few queries per running daemon.
    Returns the seconds until the first account runs out (daemons_run_out):
    the supervisor runs the pass again then, not a whole interval later.
    """
    runtime = get_runtime()
    containers = {info.handle.id: info for info in runtime.list(kind="daemon", ours=True)}
    live = {cid for cid, info in containers.items() if info.status in ("running", "restarting")}

    # Adopt: a daemon whose container runs although its row says otherwise
    # (the herder stopped between starting it and recording it).
    for daemon in Daemon.objects.filter(container_id__in=live).exclude(state=State.RUNNING):
        if daemon.state in (State.STARTING, State.DEAD):
            logger.info("adopting daemon %s", daemon.full_name)
            Daemon.objects.filter(pk=daemon.pk).update(state=State.RUNNING, metered_until=timezone.now(), claim="")
    _orphans(runtime, containers, live)

    now = timezone.now()
    exhausted = set()
    for daemon in Daemon.objects.filter(state=State.RUNNING).select_related("owner"):
        with transaction.atomic():
            daemon = daemon_charge(daemon, until=now)
            if daemon is None:
                continue
            if daemon.container_id not in live:
                logger.info("daemon %s died", daemon.full_name)
                daemon.state, daemon.stopped = State.DEAD, now
                daemon.save(update_fields=["state", "stopped"])
            else:
                _follow_ports(daemon, containers[daemon.container_id])
        if account_balance(daemon.owner) <= 0:
            exhausted.add(daemon.owner_id)
    exhausted |= daemons_exhausted()

    for daemon in Daemon.objects.filter(owner_id__in=exhausted, state__in=[State.RUNNING, State.STARTING]):
        logger.info("daemon %s: out of credits", daemon.full_name)
        daemon_stop(daemon, state=State.OUT_OF_CREDITS)

    # A dead daemon's container that stopped for good is removed, its volume kept.
    for daemon in Daemon.objects.filter(state=State.DEAD).exclude(container_id=""):
        if daemon.container_id not in live:
            runtime.remove(Handle(id=daemon.container_id, name=daemon.full_name))
            runtime.network_remove(container_name(daemon))
            Daemon.objects.filter(pk=daemon.pk).update(container_id="")

    # Networks of daemons that no longer run (a removal that failed, a herder
    # that died mid-spawn); one still in use is kept by the engine.
    active = {
        str(pk) for pk in Daemon.objects.filter(state__in=[State.RUNNING, State.STARTING]).values_list("pk", flat=True)
    }
    for network in runtime.networks(kind="daemon", ours=True):
        if network.labels.get(LABEL_DAEMON_ID) not in active:
            runtime.network_remove(network.name)
    due = daemons_run_out(now=timezone.now())
    return None if due is None else supervisor.NextPass(due)


def _orphans(runtime, containers: dict, live: set) -> None:
    """Containers no row points at: adopted when their daemon's spawn died
    before recording them, else removed, within this pass. A spawn still in
    progress (a fresh claim) is left alone."""
    owned = set(Daemon.objects.exclude(container_id="").values_list("container_id", flat=True))
    for cid, info in containers.items():
        if cid in owned:
            continue
        pk = info.labels.get(LABEL_DAEMON_ID, "")
        daemon = Daemon.objects.filter(pk=int(pk)).first() if pk.isdigit() else None
        if daemon is not None and daemon.state == State.STARTING and not daemon.container_id:
            if daemon.claimed and timezone.now() - daemon.claimed < SPAWN_STALE:
                continue
            if cid in live:
                now = timezone.now()
                adopted = Daemon.objects.filter(pk=daemon.pk, state=State.STARTING, claim=daemon.claim).update(
                    container_id=cid,
                    state=State.RUNNING,
                    started=now,
                    metered_until=now,
                    claim="",
                    host_ports={str(p): h for p, h in info.ports.items()},
                )
                if adopted:
                    logger.info("adopting daemon %s left starting", daemon.full_name)
                    continue
        logger.info("removing daemon container %s that no daemon owns", info.handle.name)
        runtime.remove(info.handle)


def _follow_ports(daemon: Daemon, info) -> None:
    """Docker publishes new host ports when it restarts a crashed daemon."""
    host_ports = {str(port): host for port, host in info.ports.items()}
    if host_ports and host_ports != daemon.host_ports:
        daemon.host_ports = host_ports
        daemon.save(update_fields=["host_ports"])
        forget_target(daemon)
