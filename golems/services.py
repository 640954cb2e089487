"""Golems: one headless Chromium container per webstrate, and the presence of
their control sockets that ad-hoc minion pairing relies on.

Every function validates the webstrate id before Docker is touched. The
container is the truth about what runs; the `Golem` row is what the herder
wants and remembers (for the admin, the supervisor and idle reaping).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from golems.models import Golem, GolemPresence
from herder.errors import BadWebstrateId, GolemNotFound, RuntimeUnavailable
from herder.runtime import (
    LABEL_INSTANCE,
    ContainerGone,
    ContainerInfo,
    ContainerSpec,
    Handle,
    deployment_instance,
    get_runtime,
)

logger = logging.getLogger(__name__)

WEBSTRATE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
KIND = "golem"
_LIVE = ("running", "restarting")
# A container that dies within this many seconds of its start crashed "at once".
QUICK_CRASH = 60


def webstrate_validate(webstrate: str) -> str:
    """The id itself when it is a valid webstrate id. Raises BadWebstrateId."""
    if not isinstance(webstrate, str) or not WEBSTRATE_ID.fullmatch(webstrate):
        raise BadWebstrateId()
    return webstrate


# --- The container ----------------------------------------------------------

def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def golem_network() -> str:
    """The Docker network golems join: the setting, else "host" when the herder
    and the webstrates server are both on the loopback address, else "bridge"."""
    if settings.HERDER_GOLEM_NETWORK:
        return settings.HERDER_GOLEM_NETWORK
    hosts = (_host(settings.HERDER_GOLEM_WEBSTRATES_URL), _host(settings.HERDER_PUBLIC_URL))
    return "host" if all(_is_loopback(h) for h in hosts) else "bridge"


def golem_allowed_hosts() -> list[str]:
    """The only host names a golem's Chromium resolves: the webstrates server's,
    the herder's, and HERDER_GOLEM_ALLOWED_HOSTS."""
    hosts = [_host(settings.HERDER_GOLEM_WEBSTRATES_URL), _host(settings.HERDER_PUBLIC_URL)]
    hosts += [h.strip().lower() for h in settings.HERDER_GOLEM_ALLOWED_HOSTS]
    return list(dict.fromkeys(h for h in hosts if h))


def golem_url(webstrate: str) -> str:
    return f"{settings.HERDER_GOLEM_WEBSTRATES_URL}/{webstrate}/"


def golem_container_name(webstrate: str) -> str:
    return f"herder-golem-{webstrate}"


def golem_container_spec(webstrate: str) -> ContainerSpec:
    """How a webstrate's golem runs: confined, limited, resolving only the allowed
    hosts (every other name is NOTFOUND, so nothing else is contacted), and
    without a DevTools port."""
    rules = ", ".join(["MAP * ~NOTFOUND"] + [f"EXCLUDE {h}" for h in golem_allowed_hosts()])
    command = [f"--host-resolver-rules={rules}"]
    security_opt = []
    if settings.HERDER_GOLEM_SANDBOX:
        # Chromium's sandbox needs user namespaces, which Docker's default
        # seccomp profile refuses to an unprivileged user.
        try:
            profile = Path(settings.HERDER_GOLEM_SECCOMP_PROFILE).read_text()
        except OSError as exc:
            raise RuntimeUnavailable(f"The golem seccomp profile cannot be read: {exc}") from exc
        security_opt.append(f"seccomp={profile}")
    else:
        command.append("--no-sandbox")
    command.append(golem_url(webstrate))
    network = golem_network()
    return ContainerSpec(
        kind=KIND,
        owner=webstrate,
        image=settings.HERDER_GOLEM_IMAGE,
        name=golem_container_name(webstrate),
        command=command,
        environment={"HOME": "/tmp", "WEBSTRATE_ID": webstrate},
        memory=settings.HERDER_GOLEM_MEMORY,
        cpus=settings.HERDER_GOLEM_CPUS,
        pids=settings.HERDER_GOLEM_PIDS,
        network=None if network == "bridge" else network,
        read_only=True,
        tmpfs={"/tmp": f"size={settings.HERDER_GOLEM_TMP_SIZE},mode=1777"},
        confined=True,
        security_opt=security_opt,
        extra_hosts={} if network == "host" else {"host.docker.internal": "host-gateway"},
    )


def _containers(webstrate: str) -> list[ContainerInfo]:
    """The webstrate's golem containers, whichever herder started them (the name is unique)."""
    return get_runtime().list(kind=KIND, owner=webstrate)


def _ours(infos: list[ContainerInfo]) -> list[ContainerInfo]:
    instance = deployment_instance()
    return [i for i in infos if i.labels.get(LABEL_INSTANCE) == instance]


def _start(golem: Golem, *, error: str = "") -> None:
    """Replace whatever container the golem has with a fresh one; `error` says why
    the previous one stopped, when it crashed."""
    spec = golem_container_spec(golem.webstrate)
    _remove_all(golem.webstrate)
    handle = get_runtime().start(spec)
    now = timezone.now()
    golem.state = Golem.State.RUNNING
    golem.container_id = handle.id
    golem.container_name = handle.name
    golem.started = now
    golem.stopped = None
    golem.error = error
    logger.info("golem %s started in %s", golem.webstrate, handle.name)


def _running(golem: Golem) -> bool:
    if not golem.is_running:
        return False
    try:
        return get_runtime().poll(Handle(id=golem.container_id, name=golem.container_name)) is None
    except ContainerGone:
        return False


def _remove_all(webstrate: str) -> None:
    """Remove the webstrate's golem containers, checking that they are gone: the
    engine answers 409 (and keeps the container) to a removal racing its start."""
    runtime = get_runtime()
    for attempt in range(50):
        left = _containers(webstrate)
        if not left:
            return
        if attempt:
            time.sleep(0.1)
        for info in left:
            runtime.remove(info.handle)
    raise RuntimeUnavailable(f"The golem containers of {webstrate} could not be removed.")


def _stop(golem: Golem, *, state: str, error: str = "") -> None:
    _remove_all(golem.webstrate)
    golem.state = state
    golem.container_id = ""
    golem.stopped = timezone.now()
    golem.error = error
    golem.save()


# --- Actions ----------------------------------------------------------------

def golem_spawn(*, webstrate: str) -> Golem:
    """Start the webstrate's golem unless it runs already (then nothing changes
    but its last activity). One golem per webstrate, whatever runs concurrently.

    Raises BadWebstrateId, RuntimeUnavailable, ImageMissing.
    """
    webstrate_validate(webstrate)
    with transaction.atomic():
        golem, _ = Golem.objects.select_for_update().get_or_create(webstrate=webstrate)
        golem.last_active = timezone.now()
        if not _running(golem):
            _start(golem)
        golem.save()
    return golem


def golem_reset(*, webstrate: str) -> Golem:
    """Restart the webstrate's golem in a fresh container (a fresh browser).

    Raises BadWebstrateId, GolemNotFound (no golem is running or crashed), RuntimeUnavailable.
    """
    webstrate_validate(webstrate)
    with transaction.atomic():
        golem = Golem.objects.select_for_update().filter(webstrate=webstrate).first()
        if golem is None or golem.state not in (Golem.State.RUNNING, Golem.State.CRASHED):
            raise GolemNotFound(f"Webstrate {webstrate} has no golem.")
        golem.last_active = timezone.now()
        golem.crash_streak = 0
        _start(golem)
        golem.save()
    return golem


def golem_kill(*, webstrate: str) -> Golem:
    """Stop and remove the webstrate's golem; its row stays, marked killed.

    Raises BadWebstrateId, GolemNotFound, RuntimeUnavailable.
    """
    webstrate_validate(webstrate)
    with transaction.atomic():
        golem = Golem.objects.select_for_update().filter(webstrate=webstrate).first()
        alive = golem is not None and golem.state in (Golem.State.RUNNING, Golem.State.CRASHED)
        if not alive and not _containers(webstrate):
            raise GolemNotFound(f"Webstrate {webstrate} has no golem.")
        if golem is None:
            golem = Golem.objects.create(webstrate=webstrate)
        _stop(golem, state=Golem.State.KILLED)
    logger.info("golem %s killed", webstrate)
    return golem


def golem_list() -> list[Golem]:
    """The golems the herder keeps running (crashed ones are being restarted)."""
    return list(Golem.objects.filter(state__in=[Golem.State.RUNNING, Golem.State.CRASHED]))


def golem_touch(*, webstrate: str) -> None:
    """Record activity (a minion came) so the golem is not reaped as idle."""
    Golem.objects.filter(webstrate=webstrate).update(last_active=timezone.now())


# --- Supervisor duties --------------------------------------------------------

def golem_reconcile() -> None:
    """Make Docker and the rows agree: adopt golem containers the rows do not know
    (after a herder restart), start a new container for golems whose container
    exited or vanished, remove leftovers, and forget stale control-socket presence."""
    presence_expire()
    infos = _ours(get_runtime().list(kind=KIND))
    live = {i.handle.id for i in infos if i.status in _LIVE}
    owners = {i.owner for i in infos}
    wanted = Golem.objects.filter(state__in=[Golem.State.RUNNING, Golem.State.CRASHED])
    suspects = {g.webstrate for g in wanted if g.container_id not in live or g.state != Golem.State.RUNNING}
    known_live = {g.container_id for g in wanted}
    suspects |= {i.owner for i in infos if i.handle.id not in known_live}
    suspects |= owners - {g.webstrate for g in wanted}
    for webstrate in sorted(suspects):
        if not WEBSTRATE_ID.fullmatch(webstrate):
            continue
        try:
            _reconcile_one(webstrate)
        except RuntimeUnavailable:
            raise
        except Exception:
            logger.exception("reconciling golem %s failed", webstrate)


def _reconcile_one(webstrate: str) -> None:
    runtime = get_runtime()
    with transaction.atomic():
        golem = Golem.objects.select_for_update().filter(webstrate=webstrate).first()
        # Listed again under the row's lock: a kill or spawn in progress has finished.
        containers = _ours(_containers(webstrate))
        running = [c for c in containers if c.status in _LIVE]
        keep = None
        if golem is not None and golem.container_id:
            keep = next((c for c in running if c.handle.id == golem.container_id), None)
        if keep is None and running:
            keep = running[0]
        for info in containers:
            if info is not keep:
                runtime.remove(info.handle)
        if keep is not None:
            if golem is None or golem.container_id != keep.handle.id or golem.state != Golem.State.RUNNING:
                golem = golem or Golem(webstrate=webstrate, last_active=timezone.now())
                golem.state = Golem.State.RUNNING
                golem.container_id = keep.handle.id
                golem.container_name = keep.handle.name
                golem.started = golem.started or keep.created
                golem.save()
                logger.info("golem %s adopted (%s)", webstrate, keep.handle.name)
            return
        if golem is None or golem.state not in (Golem.State.RUNNING, Golem.State.CRASHED):
            return
        now = timezone.now()
        if golem.state == Golem.State.RUNNING:
            exited = [c for c in containers if c.handle.id == golem.container_id]
            quick = golem.started is not None and (now - golem.started).total_seconds() < QUICK_CRASH
            golem.crash_streak = golem.crash_streak + 1 if quick else 1
            golem.state = Golem.State.CRASHED
            golem.restarts += 1
            golem.stopped = now
            golem.error = "its container exited" if exited else "its container vanished"
            golem.save()
            logger.warning("golem %s crashed (%s)", webstrate, golem.error)
        delay = restart_delay(golem.crash_streak)
        if golem.stopped is not None and (now - golem.stopped).total_seconds() < delay:
            return  # it keeps crashing: a later pass restarts it
        _start(golem, error=golem.error)
        golem.save()


def restart_delay(crash_streak: int) -> float:
    """Seconds before a crashed golem is restarted: at once after a first crash,
    then 5 s, 10 s, 20 s... up to 5 minutes while it keeps crashing right after its start."""
    return 0.0 if crash_streak <= 1 else float(min(5 * 2 ** (crash_streak - 2), 300))


def golem_reap_idle() -> None:
    """Stop golems with no spawn request and no minion for HERDER_GOLEM_IDLE_TIMEOUT seconds."""
    timeout = settings.HERDER_GOLEM_IDLE_TIMEOUT
    if timeout <= 0:
        return
    cutoff = timezone.now() - timedelta(seconds=timeout)
    idle = Golem.objects.filter(
        state__in=[Golem.State.RUNNING, Golem.State.CRASHED], last_active__lt=cutoff
    ).values_list("webstrate", flat=True)
    for webstrate in list(idle):
        with transaction.atomic():
            golem = Golem.objects.select_for_update().filter(
                webstrate=webstrate, last_active__lt=cutoff,
                state__in=[Golem.State.RUNNING, Golem.State.CRASHED],
            ).first()
            if golem is not None:
                _stop(golem, state=Golem.State.REAPED, error=f"idle for {timeout:.0f} s")
                logger.info("golem %s reaped: idle", webstrate)


# --- Control-socket presence ---------------------------------------------------

def _presence_ttl() -> timedelta:
    return timedelta(seconds=3 * settings.HERDER_PAIRING_HEARTBEAT)


def presence_claim(*, webstrate: str, channel: str) -> bool:
    """Record `channel` as the webstrate's golem control socket. False when
    another live socket holds it; a holder silent for three heartbeats is
    taken over (its process died)."""
    now = timezone.now()
    with transaction.atomic():
        taken = GolemPresence.objects.filter(webstrate=webstrate, seen__lt=now - _presence_ttl()).update(
            channel=channel, connected=now, seen=now
        )
        if taken:
            return True
        try:
            with transaction.atomic():
                GolemPresence.objects.create(webstrate=webstrate, channel=channel, connected=now, seen=now)
        except IntegrityError:
            return False
    return True


def presence_refresh(*, webstrate: str, channel: str) -> bool:
    """Renew the claim; False when it was lost (taken over after a long stall)."""
    return GolemPresence.objects.filter(webstrate=webstrate, channel=channel).update(seen=timezone.now()) == 1


def presence_release(*, webstrate: str, channel: str) -> None:
    GolemPresence.objects.filter(webstrate=webstrate, channel=channel).delete()


def presence_lookup(*, webstrate: str) -> str | None:
    """The channel of the webstrate's live golem control socket, or None."""
    return (
        GolemPresence.objects.filter(webstrate=webstrate, seen__gte=timezone.now() - _presence_ttl())
        .values_list("channel", flat=True)
        .first()
    )


def presence_expire() -> int:
    """Forget presence left by processes that died; the number forgotten."""
    deleted, _ = GolemPresence.objects.filter(seen__lt=timezone.now() - _presence_ttl()).delete()
    return deleted
