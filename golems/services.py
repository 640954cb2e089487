"""Golems: one headless Chromium container per webstrate, and the presence of
their control sockets that ad-hoc minion pairing relies on.

Every function validates the webstrate id before Docker is touched. The
container is the truth about what runs; the `Golem` row is what the herder
wants and remembers (for the admin, the supervisor and idle reaping).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import time
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from golems.models import Golem, GolemPresence
from herder.errors import BadWebstrateId, GolemNotFound, GolemProofRequired, RuntimeUnavailable
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
# The network golems join by default when the herder is not on the loopback address.
GOLEM_NETWORK = "herder-golems"
# Names a golem container's start: its proof is derived from it (golem_proof).
LABEL_GENERATION = "herder.generation"
# The cookie the golem's Chromium presents on its control socket (set by the
# image's golem-start, which knows the name too).
PROOF_COOKIE = "herder_golem_proof"
# Networks the engine provides: never created by the herder.
_ENGINE_NETWORKS = ("host", "bridge", "none", "default")


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
    and the webstrates server are both on the loopback address (nothing else
    reaches them), else GOLEM_NETWORK."""
    if settings.HERDER_GOLEM_NETWORK:
        return settings.HERDER_GOLEM_NETWORK
    hosts = (_host(settings.HERDER_GOLEM_WEBSTRATES_URL), _host(settings.HERDER_PUBLIC_URL))
    return "host" if all(_is_loopback(h) for h in hosts) else GOLEM_NETWORK


def _host_port(url: str) -> str:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    host = (parts.hostname or "").lower()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def golem_proxy_allow() -> list[str]:
    """The only host:port pairs a golem's Chromium reaches (through the proxy in
    its container): the herder's, the webstrates server's, and
    HERDER_GOLEM_ALLOWED_HOSTS (`host` for ports 80 and 443, or `host:port`)."""
    allowed = [_host_port(settings.HERDER_GOLEM_WEBSTRATES_URL), _host_port(settings.HERDER_PUBLIC_URL)]
    for entry in settings.HERDER_GOLEM_ALLOWED_HOSTS:
        entry = entry.strip().lower()
        if not entry:
            continue
        host, _, port = entry.rpartition(":")
        if host and port.isdigit() and not entry.endswith("]"):
            allowed.append(entry)
        else:
            allowed += [f"{entry}:80", f"{entry}:443"]
    return list(dict.fromkeys(allowed))


def golem_proof(webstrate: str, generation: str) -> str:
    """The secret a golem's container presents: only the herder (SECRET_KEY)
    and that container (its environment) know it; a new container, a new proof."""
    message = f"herder-golem-proof\0{webstrate}\0{generation}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


def golem_control_url(webstrate: str) -> str:
    """The control socket's URL as the golem's page opens it (herder.ws + path)."""
    url = settings.HERDER_PUBLIC_URL
    ws = "wss" + url[len("https"):] if url.startswith("https:") else "ws" + url[len("http"):]
    return f"{ws}/golem/v1/connect/{webstrate}"


def golem_allowed_hosts() -> list[str]:
    """The only host names a golem's Chromium resolves: the webstrates server's,
    the herder's, and HERDER_GOLEM_ALLOWED_HOSTS."""
    hosts = [_host(settings.HERDER_GOLEM_WEBSTRATES_URL), _host(settings.HERDER_PUBLIC_URL)]
    for entry in settings.HERDER_GOLEM_ALLOWED_HOSTS:
        entry = entry.strip().lower()
        host, _, port = entry.rpartition(":")
        # host:port names the host; a bare IPv6 address keeps its colons.
        hosts.append(host if host and port.isdigit() and not entry.endswith("]") else entry)
    return list(dict.fromkeys(h for h in hosts if h))


def golem_url(webstrate: str) -> str:
    return f"{settings.HERDER_GOLEM_WEBSTRATES_URL}/{webstrate}/"


def golem_container_name(webstrate: str) -> str:
    return f"herder-golem-{webstrate}"


def golem_container_spec(webstrate: str, generation: str = "") -> ContainerSpec:
    """How a webstrate's golem runs: confined, limited, resolving only the allowed
    hosts (every other name is NOTFOUND) and reaching only the allowed host:port
    pairs (golem-start's proxy), without a DevTools port, and holding the proof
    of `generation` for its control socket."""
    # The proxy golem-start runs for Chromium is on 127.0.0.1 in the container.
    rules = ", ".join(["MAP * ~NOTFOUND"] + [f"EXCLUDE {h}" for h in golem_allowed_hosts() + ["127.0.0.1"]])
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
        environment={
            "HOME": "/tmp", "WEBSTRATE_ID": webstrate,
            # golem-start takes these out of the environment before Chromium starts.
            "HERDER_GOLEM_PROOF": golem_proof(webstrate, generation) if generation else "",
            "HERDER_GOLEM_PROOF_URL": golem_control_url(webstrate),
            "HERDER_GOLEM_ALLOW": ",".join(golem_proxy_allow()),
            "HERDER_GOLEM_ADMIN_HOST": _host_port(settings.HERDER_PUBLIC_URL),
        },
        labels={LABEL_GENERATION: generation} if generation else {},
        memory=settings.HERDER_GOLEM_MEMORY,
        cpus=settings.HERDER_GOLEM_CPUS,
        pids=settings.HERDER_GOLEM_PIDS,
        network=None if network in ("bridge", "default") else network,
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
    generation = secrets.token_hex(16)
    spec = golem_container_spec(golem.webstrate, generation)
    _remove_all(golem.webstrate)
    if spec.network and spec.network not in _ENGINE_NETWORKS:
        get_runtime().ensure_network(spec.network, isolated=True, labels={"herder.network": "golems"})
    handle = get_runtime().start(spec)
    now = timezone.now()
    golem.state = Golem.State.RUNNING
    golem.container_id = handle.id
    golem.container_name = handle.name
    golem.generation = generation
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
                golem.generation = keep.labels.get(LABEL_GENERATION, "")
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


def golem_control_admit(*, webstrate: str, proof: str | None) -> bool:
    """Whether a control socket may open, and whether it is the golem's own:
    True when `proof` is the proof of the webstrate's golem container, False
    for an unproven socket that may still open (no golem container exists and
    HERDER_GOLEM_CONTROL_OPEN is on: a golem in a browser tab, as in the original).

    Raises GolemProofRequired.
    """
    golem = _golem_with_container(webstrate)
    if golem is not None and golem.generation and proof:
        if hmac.compare_digest(golem_proof(webstrate, golem.generation), proof):
            return True
    if golem is None and settings.HERDER_GOLEM_CONTROL_OPEN:
        return False
    raise GolemProofRequired(f"Only the golem of {webstrate} may open its control socket.")


def _golem_with_container(webstrate: str) -> Golem | None:
    """The webstrate's golem when it has (or is about to have again) a container."""
    return Golem.objects.filter(
        webstrate=webstrate, state__in=[Golem.State.RUNNING, Golem.State.CRASHED]
    ).first()


def presence_claim(*, webstrate: str, channel: str, proven: bool = False) -> tuple[bool, str | None]:
    """Record `channel` as the webstrate's golem control socket. Answers
    (claimed, replaced): a proven socket always claims it, and `replaced` is
    the channel of the socket it displaced (to be closed). An unproven socket
    claims it only when nobody live holds it; a holder silent for three
    heartbeats is taken over (its process died)."""
    now = timezone.now()
    with transaction.atomic():
        if proven:
            held = GolemPresence.objects.select_for_update().filter(webstrate=webstrate).first()
            if held is not None:
                replaced = held.channel if held.channel != channel else None
                held.channel, held.connected, held.seen, held.proven = channel, now, now, True
                held.save()
                return True, replaced
        else:
            taken = GolemPresence.objects.filter(webstrate=webstrate, seen__lt=now - _presence_ttl()).update(
                channel=channel, connected=now, seen=now, proven=False
            )
            if taken:
                return True, None
        try:
            with transaction.atomic():
                GolemPresence.objects.create(webstrate=webstrate, channel=channel, connected=now, seen=now,
                                             proven=proven)
        except IntegrityError:
            return False, None
    return True, None


def presence_refresh(*, webstrate: str, channel: str, proven: bool = False) -> bool:
    """Renew the claim; False when it was lost (taken over after a long stall,
    or replaced by a proven golem), or when it is unproven and may no longer
    hold (a golem container exists now, or unproven sockets are off)."""
    held = GolemPresence.objects.filter(webstrate=webstrate, channel=channel).update(seen=timezone.now()) == 1
    if not held:
        return False
    if not proven and (not settings.HERDER_GOLEM_CONTROL_OPEN or _golem_with_container(webstrate) is not None):
        presence_release(webstrate=webstrate, channel=channel)
        return False
    return True


def presence_release(*, webstrate: str, channel: str) -> None:
    GolemPresence.objects.filter(webstrate=webstrate, channel=channel).delete()


def presence_lookup(*, webstrate: str) -> str | None:
    """The channel of the webstrate's live golem control socket, or None. An
    unproven socket counts only while no golem container exists: minions are
    never announced to a squatter while the real golem may connect."""
    found = (
        GolemPresence.objects.filter(webstrate=webstrate, seen__gte=timezone.now() - _presence_ttl())
        .values_list("channel", "proven")
        .first()
    )
    if found is None:
        return None
    channel, proven = found
    if not proven and (not settings.HERDER_GOLEM_CONTROL_OPEN or _golem_with_container(webstrate) is not None):
        return None
    return channel


def presence_expire() -> int:
    """Forget presence left by processes that died; the number forgotten."""
    deleted, _ = GolemPresence.objects.filter(seen__lt=timezone.now() - _presence_ttl()).delete()
    return deleted
