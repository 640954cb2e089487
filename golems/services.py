"""Golems: one headless Chromium container per webstrate, and the presence of
their control sockets that ad-hoc minion pairing relies on.

Every function validates the webstrate id before Docker is touched. The
container is the truth about what runs; the `Golem` row is what the herder
wants and remembers (for the admin, the supervisor and idle reaping).
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import logging
import re
import secrets
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F
from django.utils import timezone

from golems import pairing
from golems.models import Golem, GolemPresence
from herder import events
from herder.admission import rate_check, refuse
from herder.errors import (
    BadWebstrateId,
    GolemNotFound,
    GolemProofRequired,
    RuntimeUnavailable,
    WebstrateNotFound,
    WebstratesUnavailable,
)
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
# What counts against HERDER_GOLEM_MAX: every golem the herder keeps running.
_ALIVE = ("starting", "running", "crashed")
# A start not recorded after this many seconds belongs to a process that died
# mid-start (a golem's container starts in a second or two): the supervisor takes over.
START_STALE = 120
# How long a spawn or reset waits for another's start of the same golem.
START_WAIT = 60
# Retry-After of a spawn refused because the herder runs HERDER_GOLEM_MAX golems:
# places free up as idle golems are reaped.
TOTAL_RETRY_AFTER = 60
# Serialises golem admission on PostgreSQL (pg_advisory_xact_lock): "golem" in ASCII.
_ADMISSION_LOCK = 0x676F6C656D


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
    ws = "wss" + url[len("https") :] if url.startswith("https:") else "ws" + url[len("http") :]
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
            "HOME": "/tmp",
            "WEBSTRATE_ID": webstrate,
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


# --- Claims: the row first, Docker after, no database lock across it ----------
#
# On SQLite a transaction holding a write lock locks every other writer (minion
# runs recording themselves) for as long as it lasts, and a golem's container
# takes a second or more to start. So a start is claimed in a short transaction
# (the row becomes STARTING, `started` the claim's time), Docker works with no
# transaction open, and the result is recorded only if the claim still holds
# (a conditional update); a start whose claim was lost (a kill, a reset) removes
# what it started. Within this process, the Docker work of one webstrate is
# serialised by a lock stripe, so a kill and a start never interleave their calls.

_STRIPES = [threading.RLock() for _ in range(64)]


def _stripe(webstrate: str) -> threading.RLock:
    return _STRIPES[hash(webstrate) % len(_STRIPES)]


def _unchanged(golem: Golem):
    """The row, if it is still as `golem` saw it (for conditional updates)."""
    return Golem.objects.filter(pk=golem.pk, state=golem.state, container_id=golem.container_id, started=golem.started)


def _stale(golem: Golem) -> bool:
    """A claim not finished for START_STALE seconds: its process died mid-start."""
    return (
        golem.state == Golem.State.STARTING
        and golem.started is not None
        and (timezone.now() - golem.started).total_seconds() > START_STALE
    )


@contextmanager
def _admission():
    """A transaction in which golems are counted and one is claimed, one at a time
    in every process: SQLite's IMMEDIATE transactions are serial already; on
    PostgreSQL a transaction-scoped advisory lock makes them so."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADMISSION_LOCK])
        yield


def _admit_total() -> None:
    """Raise 429 when HERDER_GOLEM_MAX golems are running, starting or crashed."""
    limit = settings.HERDER_GOLEM_MAX
    if limit and Golem.objects.filter(state__in=_ALIVE).count() >= limit:
        raise refuse(
            "golem_total", f"The herder runs its limit of {limit} golems; try again later.", wait=TOTAL_RETRY_AFTER
        )


def _claim(webstrate: str, seen: Golem | None, *, new: bool, **changes) -> Golem | None:
    """Mark the golem STARTING if its row is still as `seen` (None: no row); a
    `new` golem first counts against HERDER_GOLEM_MAX. None when the row moved on."""
    now = timezone.now()
    fields = {"state": Golem.State.STARTING, "container_id": "", "started": now, "last_active": now, **changes}
    try:
        with _admission():
            if new:
                _admit_total()
            if seen is None:
                return Golem.objects.create(webstrate=webstrate, **fields)
            if not _unchanged(seen).update(**fields):
                return None
    except IntegrityError:  # created meanwhile by another request
        return None
    return Golem.objects.get(pk=seen.pk)


def _start_container(webstrate: str, generation: str):
    spec = golem_container_spec(webstrate, generation)
    runtime = get_runtime()
    if spec.network and spec.network not in _ENGINE_NETWORKS:
        runtime.network_create(spec.network, kind="golem")
    for attempt in range(3):
        _remove_all(webstrate)
        try:
            return runtime.start(spec)
        except Exception as exc:
            # 409: a container of that name appeared meanwhile (a superseded start
            # in another process); it is removed and the start tried again.
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status != 409 or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _launch(golem: Golem, *, undo, error: str = "") -> Golem:
    """Start the container of a claimed (STARTING) golem and record it, if the
    claim still holds; else remove what was started. On failure `undo(why)` puts
    the row back (or marks it crashed) before the error goes on."""
    claimed = Golem.objects.filter(pk=golem.pk, state=Golem.State.STARTING, started=golem.started)
    with _stripe(golem.webstrate):
        if not claimed.exists():
            return Golem.objects.get(pk=golem.pk)
        try:
            # A new container, a new proof (golem_proof).
            generation = secrets.token_hex(16)
            handle = _start_container(golem.webstrate, generation)
        except Exception as exc:
            undo(claimed, str(exc)[:255])
            raise
        if not claimed.update(
            state=Golem.State.RUNNING,
            container_id=handle.id,
            container_name=handle.name,
            generation=generation,
            stopped=None,
            error=error,
        ):
            get_runtime().remove(handle)
            logger.info("golem %s: a start lost its claim; its container is removed", golem.webstrate)
            return Golem.objects.get(pk=golem.pk)
    started = Golem.objects.get(pk=golem.pk)
    events.golem_started(started)  # the log line
    return started


def _undo_to(seen: Golem | None):
    """How a failed spawn puts the row back: gone when it was new, else as it was."""

    def undo(claimed, why: str) -> None:
        if seen is None:
            claimed.delete()
        else:
            claimed.update(state=seen.state, container_id=seen.container_id, started=seen.started)

    return undo


def _undo_crashed(claimed, why: str) -> None:
    """A failed restart: crashed, so the supervisor tries again (waiting longer each time)."""
    claimed.update(state=Golem.State.CRASHED, stopped=timezone.now(), error=why, crash_streak=F("crash_streak") + 1)


def _stop(webstrate: str, rows, *, state: str, error: str = "") -> bool:
    """Mark `rows` (the webstrate's row, filtered) stopped, then remove its containers
    unless a start claimed it meanwhile. False when no row matched."""
    with _stripe(webstrate):
        now = timezone.now()
        if not rows.update(state=state, container_id="", stopped=now, error=error):
            return False
        if Golem.objects.filter(webstrate=webstrate, state=state, stopped=now).exists():
            _remove_all(webstrate)
    return True


# --- Actions ----------------------------------------------------------------


def golem_spawn(*, webstrate: str, client: str = "") -> Golem:
    """Start the webstrate's golem unless it runs already (then nothing changes
    but its last activity). One golem per webstrate, whatever runs concurrently;
    a spawn while another starts it answers that golem once started.

    A new golem (not running, starting or crashed) must exist on the webstrates
    server (HERDER_GOLEM_CHECK_EXISTS) and counts against HERDER_GOLEM_MAX and,
    for a `client` (herder.admission.client_of; none for the admin and the
    supervisor), against its HERDER_GOLEM_SPAWN_RATE.

    Raises BadWebstrateId, TooManyRequests, WebstrateNotFound, WebstratesUnavailable,
    RuntimeUnavailable, ImageMissing.
    """
    webstrate_validate(webstrate)
    deadline = time.monotonic() + START_WAIT
    admitted = False
    while time.monotonic() < deadline:
        golem = Golem.objects.filter(webstrate=webstrate).first()
        if golem is not None and golem.state == Golem.State.STARTING and not _stale(golem):
            time.sleep(0.05)  # another request starts it
            continue
        if golem is not None and _running(golem):
            golem.last_active = timezone.now()
            Golem.objects.filter(pk=golem.pk).update(last_active=golem.last_active)
            return golem
        new = golem is None or golem.state not in _ALIVE
        if new and not admitted:
            # Cheapest refusal first; the rate counts only spawns the herder could serve.
            _admit_total()
            if client:
                rate_check("golem-spawn", client, settings.HERDER_GOLEM_SPAWN_RATE)
            webstrate_check_exists(webstrate)
            admitted = True
            continue  # the row may have moved on while we asked
        claimed = _claim(webstrate, golem, new=new, error="")
        if claimed is not None:
            return _launch(claimed, undo=_undo_to(golem) if new else _undo_crashed)
    golem = Golem.objects.filter(webstrate=webstrate).first()
    if golem is None:
        raise RuntimeUnavailable(f"The golem of {webstrate} could not be started in time.")
    return golem


def golem_reset(*, webstrate: str, client: str = "") -> Golem:
    """Restart the webstrate's golem in a fresh container (a fresh browser). A
    golem being started is fresh already: the reset answers it once started.
    A reset starts a Chromium as a new golem does: for a `client`, it counts
    against the same HERDER_GOLEM_SPAWN_RATE.

    Raises BadWebstrateId, GolemNotFound (no golem is running or crashed),
    TooManyRequests, RuntimeUnavailable.
    """
    webstrate_validate(webstrate)
    deadline = time.monotonic() + START_WAIT
    admitted = not client
    while time.monotonic() < deadline:
        golem = Golem.objects.filter(webstrate=webstrate).first()
        if golem is None or golem.state not in _ALIVE:
            raise GolemNotFound(f"Webstrate {webstrate} has no golem.")
        if golem.state == Golem.State.STARTING and not _stale(golem):
            time.sleep(0.05)
            continue
        if not admitted:
            rate_check("golem-spawn", client, settings.HERDER_GOLEM_SPAWN_RATE)
            admitted = True
        claimed = _claim(webstrate, golem, new=False, crash_streak=0)
        if claimed is not None:
            return _launch(claimed, undo=_undo_crashed)
    return Golem.objects.get(webstrate=webstrate)


def golem_kill(*, webstrate: str) -> Golem:
    """Stop and remove the webstrate's golem; its row stays, marked killed. A start
    in progress loses its claim and removes what it started.

    Raises BadWebstrateId, GolemNotFound, RuntimeUnavailable.
    """
    webstrate_validate(webstrate)
    with _stripe(webstrate):
        golem = Golem.objects.filter(webstrate=webstrate).first()
        alive = golem is not None and golem.state in _ALIVE
        if not alive and not _containers(webstrate):
            raise GolemNotFound(f"Webstrate {webstrate} has no golem.")
        if golem is None:
            golem, _ = Golem.objects.get_or_create(webstrate=webstrate, defaults={"state": Golem.State.KILLED})
        _stop(webstrate, Golem.objects.filter(pk=golem.pk), state=Golem.State.KILLED)
    events.golem_stopped(webstrate, Golem.State.KILLED)
    return Golem.objects.get(pk=golem.pk)


def golem_list() -> list[Golem]:
    """The golems the herder keeps running (starting ones, crashed ones being restarted)."""
    return list(Golem.objects.filter(state__in=_ALIVE))


def golem_touch(*, webstrate: str) -> None:
    """Record activity (a minion came, or is still there) so the golem is not reaped as idle."""
    Golem.objects.filter(webstrate=webstrate).update(last_active=timezone.now())


def golem_snapshot() -> dict:
    """Golems against their limits, and the bytes pairing sockets of this process
    hold, for /pressure and the metrics."""
    states = dict(Golem.objects.filter(state__in=_ALIVE).values_list("state").annotate(n=Count("pk")))
    return {
        "in_use": sum(states.values()),
        "limit": settings.HERDER_GOLEM_MAX,
        "starting": states.get(Golem.State.STARTING, 0),
        "crashed": states.get(Golem.State.CRASHED, 0),
        "spawn_rate": settings.HERDER_GOLEM_SPAWN_RATE,
        "pairing_buffered_bytes": pairing.buffered_bytes(),
        "pairing_buffer_bytes_limit": settings.HERDER_PAIRING_BUFFER_BYTES,
    }


# --- Does the webstrate exist? --------------------------------------------------

# A webstrate that exists rarely stops existing: spare the webstrates server.
_EXISTS_TTL = 60
# One created a moment after a refusal is found soon.
_MISSING_TTL = 10


def webstrate_check_exists(webstrate: str) -> None:
    """Raise WebstrateNotFound unless the webstrates server has the webstrate
    (when HERDER_GOLEM_CHECK_EXISTS); answers are cached briefly, in the cache
    every herder process shares. Raises WebstratesUnavailable when it does not answer."""
    if not settings.HERDER_GOLEM_CHECK_EXISTS:
        return
    url = settings.HERDER_WEBSTRATES_URL
    key = "herder:webstrate-exists:" + hashlib.sha256(f"{url}/{webstrate}".encode()).hexdigest()[:40]
    exists = cache.get(key)
    if exists is None:
        exists = _webstrate_exists(url, webstrate)
        cache.set(key, exists, _EXISTS_TTL if exists else _MISSING_TTL)
    if not exists:
        raise WebstrateNotFound(f"The webstrates server has no webstrate {webstrate} (or does not let it be read).")


def _webstrate_exists(base: str, webstrate: str) -> bool:
    """Ask the webstrates server. Its page `/<id>/` answers 200 for any id (a
    webstrate is created when first edited), but `/<id>/?json` answers 404 for
    one that was never created, and 403 for one an anonymous visitor, such as a
    golem's Chromium, may not read. HEAD, or GET when HEAD is not allowed."""
    url = urlsplit(base)
    path = f"{url.path.rstrip('/')}/{webstrate}/?json"
    connection_class = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    status = 0
    try:
        for method in ("HEAD", "GET"):
            conn = connection_class(url.hostname, url.port, timeout=settings.HERDER_GOLEM_CHECK_TIMEOUT)
            try:
                conn.request(method, path, headers={"User-Agent": "herder", "Accept": "application/json"})
                status = conn.getresponse().status  # the body is never read
            finally:
                conn.close()
            if status not in (405, 501):
                break
    except (OSError, http.client.HTTPException) as exc:
        raise WebstratesUnavailable(f"The webstrates server does not answer: {exc}") from exc
    if status < 400:
        return True
    if status in (401, 403, 404, 410):
        return False
    raise WebstratesUnavailable(f"The webstrates server answered {status}.")


# --- Supervisor duties --------------------------------------------------------


def golem_reconcile() -> None:
    """Make Docker and the rows agree: adopt golem containers the rows do not know
    (after a herder restart), start a new container for golems whose container
    exited or vanished (or whose start never finished), remove leftovers, and
    forget stale control-socket presence."""
    presence_expire()
    infos = _ours(get_runtime().list(kind=KIND))
    live = {i.handle.id for i in infos if i.status in _LIVE}
    owners = {i.owner for i in infos}
    wanted = Golem.objects.filter(state__in=_ALIVE)
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
    """One webstrate: decided on the row as read, then Docker's list; every change
    to the row is conditional on it being unchanged (else the next pass decides)."""
    runtime = get_runtime()
    with _stripe(webstrate):
        golem = Golem.objects.filter(webstrate=webstrate).first()
        if golem is not None and golem.state == Golem.State.STARTING and not _stale(golem):
            return  # a start in progress: it records its container itself
        containers = _ours(_containers(webstrate))
        running = [c for c in containers if c.status in _LIVE]
        keep = None
        if golem is not None and golem.container_id:
            keep = next((c for c in running if c.handle.id == golem.container_id), None)
        if keep is None and running:
            keep = running[0]
        if keep is not None:
            if golem is None:
                try:
                    Golem.objects.create(
                        webstrate=webstrate,
                        last_active=timezone.now(),
                        state=Golem.State.RUNNING,
                        container_id=keep.handle.id,
                        container_name=keep.handle.name,
                        started=keep.created,
                        generation=keep.labels.get(LABEL_GENERATION, ""),
                    )
                except IntegrityError:
                    return
                logger.info("golem %s adopted (%s)", webstrate, keep.handle.name)
            elif golem.container_id != keep.handle.id or golem.state != Golem.State.RUNNING:
                if not _unchanged(golem).update(
                    state=Golem.State.RUNNING,
                    container_id=keep.handle.id,
                    container_name=keep.handle.name,
                    generation=keep.labels.get(LABEL_GENERATION, ""),
                    started=golem.started or keep.created,
                ):
                    return
                logger.info("golem %s adopted (%s)", webstrate, keep.handle.name)
            for info in containers:
                if info is not keep:
                    runtime.remove(info.handle)
            return
        if golem is None or golem.state not in _ALIVE:
            if golem is None or _unchanged(golem).exists():
                for info in containers:
                    runtime.remove(info.handle)
            return
        now = timezone.now()
        if golem.state in (Golem.State.RUNNING, Golem.State.STARTING):
            exited = [c for c in containers if c.handle.id == golem.container_id]
            quick = golem.started is not None and (now - golem.started).total_seconds() < QUICK_CRASH
            error = (
                "its start did not finish"
                if golem.state == Golem.State.STARTING
                else "its container exited"
                if exited
                else "its container vanished"
            )
            crashed = {
                "state": Golem.State.CRASHED,
                "crash_streak": golem.crash_streak + 1 if quick else 1,
                "restarts": golem.restarts + 1,
                "stopped": now,
                "error": error,
            }
            if not _unchanged(golem).update(**crashed):
                return
            for name, value in crashed.items():
                setattr(golem, name, value)
            events.golem_stopped(webstrate, Golem.State.CRASHED, golem.error)
        delay = restart_delay(golem.crash_streak)
        if golem.stopped is not None and (now - golem.stopped).total_seconds() < delay:
            return  # it keeps crashing: a later pass restarts it
        claimed = _claim(webstrate, golem, new=False, last_active=golem.last_active)
        if claimed is not None:
            _launch(claimed, undo=_undo_crashed, error=golem.error)


def restart_delay(crash_streak: int) -> float:
    """Seconds before a crashed golem is restarted: at once after a first crash,
    then 5 s, 10 s, 20 s... up to 5 minutes while it keeps crashing right after its start."""
    return 0.0 if crash_streak <= 1 else float(min(5 * 2 ** (crash_streak - 2), 300))


def golem_reap_idle() -> None:
    """Stop golems with no spawn request, reset or minion for HERDER_GOLEM_IDLE_TIMEOUT seconds."""
    timeout = settings.HERDER_GOLEM_IDLE_TIMEOUT
    if timeout <= 0:
        return
    cutoff = timezone.now() - timedelta(seconds=timeout)
    idle = Golem.objects.filter(
        state__in=[Golem.State.RUNNING, Golem.State.CRASHED], last_active__lt=cutoff
    ).values_list("webstrate", flat=True)
    for webstrate in list(idle):
        rows = Golem.objects.filter(
            webstrate=webstrate, last_active__lt=cutoff, state__in=[Golem.State.RUNNING, Golem.State.CRASHED]
        )
        if _stop(webstrate, rows, state=Golem.State.REAPED, error=f"idle for {timeout:.0f} s"):
            events.golem_stopped(webstrate, Golem.State.REAPED, f"idle for {timeout:.0f} s")


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
            events.golem_proven(golem)  # herder_golem_ready_seconds, once per container
            return True
    if golem is None and settings.HERDER_GOLEM_CONTROL_OPEN:
        return False
    raise GolemProofRequired(f"Only the golem of {webstrate} may open its control socket.")


def _golem_with_container(webstrate: str) -> Golem | None:
    """The webstrate's golem when it has (or is about to have again) a container."""
    return Golem.objects.filter(webstrate=webstrate, state__in=[Golem.State.RUNNING, Golem.State.CRASHED]).first()


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
                GolemPresence.objects.create(
                    webstrate=webstrate, channel=channel, connected=now, seen=now, proven=proven
                )
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
