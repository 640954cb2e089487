"""Daemons: long-lived containers owned by accounts and paid for in credits."""

from __future__ import annotations

import json
import logging
import re
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rest_framework.exceptions import NotFound

from accounts.services import account_balance, credits_spend
from herder.errors import BadInput, ImageNotAllowed, InsufficientCredits
from herder.runtime import ContainerSpec, Handle, get_runtime
from minions.files import check_files

from daemons.models import Daemon
from daemons.proxy import forget_target

logger = logging.getLogger(__name__)

NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}$")
State = Daemon.State


def check_daemon_name(name: str) -> str:
    if not NAME.match(name or ""):
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
        raise BadInput("ports must be a JSON list, e.g. [8080] or [\"80\", \"443\"].", code="bad_ports")
    if len(values) > settings.HERDER_DAEMON_MAX_PORTS:
        raise BadInput(f"At most {settings.HERDER_DAEMON_MAX_PORTS} ports.", code="bad_ports")
    ports = []
    for value in values:
        text = str(value).removesuffix("/tcp")
        if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= 65535:
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


def daemon_spec(daemon: Daemon) -> ContainerSpec:
    return ContainerSpec(
        kind="daemon",
        owner=daemon.owner.email,
        image=daemon.image,
        name=f"herder-daemon-{daemon.full_name}",
        labels={"herder.daemon": daemon.full_name},
        memory=settings.HERDER_DAEMON_MEMORY,
        cpus=settings.HERDER_DAEMON_CPUS,
        pids=settings.HERDER_DAEMON_PIDS,
        network=None,
        volumes={daemon.volume: "/minion"},
        ports={port: None for port in daemon.ports},
        port_host=settings.HERDER_DAEMON_PORT_HOST,
        confined=settings.HERDER_DAEMON_CONFINED,
        stdin=True,
        stdin_once=False,
        restart=settings.HERDER_DAEMON_RESTART,
    )


def daemon_spawn(*, account, jti: str, name: str, image: str, ports: list[int],
                 files: dict[str, bytes]) -> Daemon:
    """Start the account's daemon `name`, or restart it when it exists.

    Files are written into its volume at /minion, which outlives restarts.
    Raises BadInput, ImageNotAllowed, PayloadTooLarge, InsufficientCredits,
    RuntimeUnavailable.
    """
    check_daemon_name(name)
    check_files(files)
    check_image(image)
    if account_balance(account) <= 0:
        raise InsufficientCredits("The account has no credits left.")
    with transaction.atomic():
        daemon, _ = Daemon.objects.select_for_update().get_or_create(
            owner=account, name=name,
            # The volume outlives restarts and kills without wipe: named once.
            defaults={"full_name": f"{name}-{jti}", "volume": f"herder-daemon-{secrets.token_hex(6)}-{name}"},
        )
        old = daemon.container_id
        if old and daemon.is_running:
            _charge(daemon, until=timezone.now())
        daemon.full_name = f"{name}-{jti}"
        daemon.image, daemon.ports, daemon.host_ports = image, ports, {}
        daemon.state, daemon.container_id, daemon.stopped = State.STARTING, "", None
        daemon.save()
    forget_target(daemon.full_name)
    runtime = get_runtime()
    if old:
        runtime.remove(Handle(id=old, name=old))
    try:
        handle = runtime.start(daemon_spec(daemon), files=files)
        published = runtime.published_ports(handle)
    except Exception:
        Daemon.objects.filter(pk=daemon.pk).update(state=State.FAILED, stopped=timezone.now())
        raise
    now = timezone.now()
    daemon.container_id = handle.id
    daemon.host_ports = {str(port): host for port, host in published.items()}
    daemon.state, daemon.started, daemon.metered_until = State.RUNNING, now, now
    daemon.save()
    return daemon


def daemon_get(*, account, name: str) -> Daemon:
    """The account's daemon by its name or its full name. Raises NotFound,
    also for another account's daemon."""
    daemon = (Daemon.objects.filter(owner=account, name=name).first()
              or Daemon.objects.filter(owner=account, full_name=name).first())
    if daemon is None or daemon.state == State.KILLED:
        raise NotFound(f"No daemon {name!r}.")
    return daemon


def daemon_list(*, account) -> list[Daemon]:
    return list(Daemon.objects.filter(owner=account).exclude(state=State.KILLED))


def daemon_kill(*, account, name: str, wipe: bool = False) -> Daemon:
    """Stop and remove the daemon's container, charging it up to now; with
    `wipe` its volume goes too. Raises NotFound."""
    daemon = daemon_get(account=account, name=name)
    return daemon_stop(daemon, state=State.KILLED, wipe=wipe)


def daemon_stop(daemon: Daemon, *, state: str, wipe: bool = False) -> Daemon:
    """Charge up to now, then stop and remove the container; the row takes `state`."""
    with transaction.atomic():
        daemon = Daemon.objects.select_for_update().select_related("owner").get(pk=daemon.pk)
        if daemon.is_running:
            _charge(daemon, until=timezone.now())
        container, daemon.container_id = daemon.container_id, ""
        daemon.state, daemon.stopped = state, timezone.now()
        daemon.save()
    forget_target(daemon.full_name)
    runtime = get_runtime()
    if container:
        runtime.remove(Handle(id=container, name=container))
    if wipe:
        runtime.remove_volume(daemon.volume)
    return daemon


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
    spent = credits_spend(account=daemon.owner, amount=seconds * settings.HERDER_DAEMON_COST_PER_SECOND,
                          subject=daemon.full_name, note=f"{seconds} s running")
    daemon.metered_until += timedelta(seconds=seconds)
    daemon.credits_used += spent
    daemon.save(update_fields=["metered_until", "credits_used"])
    return spent


def daemon_supervise() -> None:
    """One supervisor pass over the running daemons: notice dead containers,
    adopt running ones, charge, and stop the daemons of accounts at zero.

    Costs one container listing plus a few queries per running daemon.
    """
    runtime = get_runtime()
    containers = {info.handle.id: info for info in runtime.list(kind="daemon")}
    live = {cid for cid, info in containers.items() if info.status in ("running", "restarting")}

    # Adopt: a daemon whose container runs although its row says otherwise
    # (the herder stopped between starting it and recording it).
    for daemon in Daemon.objects.filter(container_id__in=live).exclude(state=State.RUNNING):
        if daemon.state in (State.STARTING, State.DEAD):
            logger.info("adopting daemon %s", daemon.full_name)
            Daemon.objects.filter(pk=daemon.pk).update(state=State.RUNNING, metered_until=timezone.now())

    now = timezone.now()
    exhausted = set()
    for daemon in Daemon.objects.filter(state=State.RUNNING).select_related("owner"):
        with transaction.atomic():
            daemon = Daemon.objects.select_for_update().select_related("owner").get(pk=daemon.pk)
            if daemon.state != State.RUNNING:
                continue
            _charge(daemon, until=now)
            if daemon.container_id not in live:
                logger.info("daemon %s died", daemon.full_name)
                daemon.state, daemon.stopped = State.DEAD, now
                daemon.save(update_fields=["state", "stopped"])
        if account_balance(daemon.owner) <= 0:
            exhausted.add(daemon.owner_id)

    for daemon in Daemon.objects.filter(owner_id__in=exhausted, state__in=[State.RUNNING, State.STARTING]):
        logger.info("daemon %s: out of credits", daemon.full_name)
        daemon_stop(daemon, state=State.OUT_OF_CREDITS)

    # A dead daemon's container that stopped for good is removed, its volume kept.
    for daemon in Daemon.objects.filter(state=State.DEAD).exclude(container_id=""):
        if daemon.container_id not in live:
            runtime.remove(Handle(id=daemon.container_id, name=daemon.full_name))
            Daemon.objects.filter(pk=daemon.pk).update(container_id="")
