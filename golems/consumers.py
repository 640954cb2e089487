"""Ad-hoc minion pairing over WebSocket (Channels).

- `GolemControlConsumer`  ws /golem/v1/connect/<webstrate>: the golem's control socket.
- `MinionPairConsumer`    ws /minion/v1/connect/<webstrate>?type=<type>: an ad-hoc minion.
- `GolemMinionConsumer`   ws /golem/v1/connect-to/<webstrate>/<minion id>: the golem's
  socket to one minion; frames are relayed both ways, unchanged and in order.

How the pieces find each other across processes is described in golems/pairing.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.http.cookie import parse_cookie
from rest_framework.exceptions import APIException

from golems.pairing import (
    Outbox,
    event,
    is_minion_id,
    local_sockets,
    minion_group,
    send_patiently,
    waiting_group,
)
from golems.services import (
    PROOF_COOKIE,
    golem_control_admit,
    golem_touch,
    presence_claim,
    presence_lookup,
    presence_refresh,
    presence_release,
    webstrate_validate,
)
from herder.errors import BadInput, BadWebstrateId, GolemConnected, GolemProofRequired, PayloadTooLarge
from herder.handshake import can_refuse_before_upgrade, refuse_before_upgrade
from herder.metrics import count_relayed

logger = logging.getLogger(__name__)


def _db(function):
    """Run a short ORM call in a worker thread of its own: channels' default
    (thread_sensitive) queues every consumer's database calls behind one thread,
    so one slow write (SQLite's lock) would hold up every socket's presence."""
    return database_sync_to_async(function, thread_sensitive=False)


class MinionNotFound(APIException):
    status_code = 404
    default_detail = "No such minion is waiting for this webstrate's golem."
    default_code = "minion_not_found"


class MinionPaired(APIException):
    status_code = 409
    default_detail = "That minion is already paired with a golem socket."
    default_code = "minion_paired"


class BadMinionId(BadInput):
    default_detail = "A minion id is the UUID given in the golem's minion-connected event."
    default_code = "bad_minion_id"


class _PairingConsumer(AsyncWebsocketConsumer):
    """What the three sockets share: refusing in the herder's error shape, and a
    relay to one peer socket with liveness pings."""

    _accepted = False
    _overflowed = False
    peer: str | None = None
    outbox: Outbox | None = None
    _watchdog: asyncio.Task | None = None
    _last_heard = 0.0

    async def __call__(self, scope, receive, send):
        """As AsyncConsumer.__call__, but the socket's messages and the channel's are
        dispatched by two loops, each in order. A socket waiting for room towards its
        peer thus keeps delivering its peer's frames: two peers streaming at each
        other at once never wait on each other."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        self.base_send = send
        local_sockets[self.channel_name] = self.dispatch
        loops = [
            asyncio.create_task(self._dispatch_from(receive)),
            asyncio.create_task(self._dispatch_from(self.channel_receive)),
        ]
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for loop in done:
                loop.result()
        except StopConsumer:
            pass
        finally:
            local_sockets.pop(self.channel_name, None)
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
            # Whatever ended the consumer, none of its timers or senders outlives it.
            for name in ("_watchdog", "_heartbeat", "_give_up", "_timer", "_keep_alive", "_renew"):
                task = getattr(self, name, None)
                if task is not None:
                    task.cancel()
            if self.outbox is not None:
                self.outbox.cancel()

    async def _dispatch_from(self, source) -> None:
        while True:
            await self.dispatch(await source())
            # A source that always has a message ready must not starve the other.
            await asyncio.sleep(0)

    async def dispatch(self, message):
        # The stock dispatch first closes old connections on channels' one shared
        # thread, before every message: relay traffic would pay a thread hop per
        # frame, and every socket's connect would queue behind whatever holds
        # that thread. These consumers' ORM calls all go through _db, which
        # closes old connections in its own thread.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def accept(self, subprotocol=None, headers=None):
        if not self._accepted:
            self._accepted = True
            await super().accept(subprotocol, headers)

    async def send(self, text_data=None, bytes_data=None, close=False):
        # A peer may speak to this socket before connect() has accepted it (a golem's
        # claim is visible at once; a minion's frames may overtake its pairing reply).
        if not self._accepted:
            await self.accept()
        await super().send(text_data, bytes_data, close)

    async def refuse(self, exc: APIException, *, before_upgrade: bool = False) -> None:
        """Tell the client why, `{"type": "error", "code", "detail"}`, then close with 4000 + status.
        With `before_upgrade`, a socket not accepted yet gets the HTTP status instead where
        the server can, as the original herder did (herder/handshake.py)."""
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        if before_upgrade and not self._accepted:
            await refuse_before_upgrade(self, exc.status_code, code, str(exc.detail))
            return
        await self.accept()
        await self.send(
            text_data=json.dumps(
                {
                    "type": "error",
                    "code": code,
                    "detail": str(exc.detail),
                }
            )
        )
        await self.close(code=4000 + exc.status_code)

    async def webstrate_accepted(self) -> bool:
        """Refuse (4400) a webstrate id that is not valid; False when refused."""
        try:
            webstrate_validate(self.webstrate)
        except BadWebstrateId as exc:
            await self.refuse(exc)
            return False
        return True

    @property
    def webstrate(self) -> str:
        return self.scope["url_route"]["kwargs"]["webstrate"]

    # --- The relay ---------------------------------------------------------

    def _new_outbox(self) -> None:
        self.outbox = Outbox(
            self.channel_layer,
            size=settings.HERDER_PAIRING_BUFFER,
            max_bytes=settings.HERDER_PAIRING_BUFFER_BYTES,
            on_fail=self._peer_stuck,
        )

    def _paired(self, peer: str) -> None:
        self.peer = peer
        self._last_heard = asyncio.get_running_loop().time()
        self.outbox.start(peer)
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch())

    def _unpaired(self) -> None:
        self.peer = None
        self.outbox.cancel()
        self._new_outbox()

    async def _watch(self) -> None:
        beat = settings.HERDER_PAIRING_HEARTBEAT
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(beat)
            if self.peer is None:
                continue
            self.outbox.put_nowait({"type": "relay.ping", "from": self.channel_name})
            if loop.time() - self._last_heard > 3 * beat:
                # Its process died without a word: nothing else would tell us.
                await self.peer_left()

    async def _peer_stuck(self) -> None:
        await self.close(code=1011)

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self._overflowed:
            return  # refused: what still arrives before the close is dropped
        if bytes_data is not None:
            message = {"type": "relay.frame", "bytes": bytes_data}
        else:
            message = {"type": "relay.frame", "text": text_data}
        if self.peer is not None:
            # Waits while the outbox is full: this socket stops reading its client.
            await self.outbox.put(message)
        elif not self.outbox.put_nowait(message):
            try:
                # Pairing may be a moment away: wait for it (holding the socket's
                # reading back) as long as this kind of socket may.
                await asyncio.wait_for(self.outbox.put(message), self.pairing_patience())
            except asyncio.TimeoutError:
                self._overflowed = True
                self.outbox.cancel()  # what it kept will never be relayed: free it now
                await self.refuse(
                    PayloadTooLarge(
                        f"More than {settings.HERDER_PAIRING_BUFFER} frames or "
                        f"{settings.HERDER_PAIRING_BUFFER_BYTES} bytes were sent before pairing."
                    )
                )

    def pairing_patience(self) -> float:
        """Seconds a full pre-pairing queue waits for pairing before refusing."""
        return 0

    async def relay_frame(self, message: dict) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        count_relayed()  # herder_relay_messages_total
        data = message.get("bytes")
        if data is not None:
            await self.send(bytes_data=data)
        else:
            await self.send(text_data=message["text"])

    async def relay_batch(self, message: dict) -> None:
        """Several messages of a peer in another process, in their order."""
        for each in message["messages"]:
            await self.dispatch(each)

    async def relay_ping(self, message: dict) -> None:
        if message.get("from") == self.peer:
            self._last_heard = asyncio.get_running_loop().time()

    async def relay_closed(self, message: dict) -> None:
        if message.get("from") == self.peer:
            await self.peer_left()

    async def peer_left(self) -> None:
        raise NotImplementedError

    async def _leave_peer(self) -> None:
        """Tell the peer, after every frame still queued for it."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.peer is not None:
            self.outbox.put_nowait({"type": "relay.closed", "from": self.channel_name})
            await self.outbox.close()
            self.peer = None
        elif self.outbox is not None:
            self.outbox.cancel()


class GolemControlConsumer(_PairingConsumer):
    """ws /golem/v1/connect/<webstrate>: receives minion-connected and
    minion-disconnected events. One per webstrate across every herder process;
    a second is refused: HTTP 409 before the upgrade where the server can, else 4409.

    The golem's own browser proves it is the golem (the cookie its container
    sets, golem_control_admit): such a socket replaces any other, which is
    closed with 4409. Without the proof a socket is refused (4403) while the
    webstrate has a golem container."""

    claimed = False
    proven = False
    _heartbeat: asyncio.Task | None = None

    def _proof(self) -> str | None:
        for name, value in self.scope.get("headers", []):
            if name == b"cookie":
                proof = parse_cookie(value.decode("latin-1")).get(PROOF_COOKIE)
                if proof:
                    return proof
        return None

    async def connect(self) -> None:
        if not await self.webstrate_accepted():
            return
        try:
            proven = await _db(golem_control_admit)(webstrate=self.webstrate, proof=self._proof())
        except GolemProofRequired as exc:
            await self.refuse(exc)
            return
        self.proven = proven
        # Claimed before accepting, so that a second socket can be refused before
        # its upgrade; minions that find the claim first are told once send() accepts.
        self.claimed, replaced = await _db(presence_claim)(
            webstrate=self.webstrate, channel=self.channel_name, proven=proven
        )
        if not self.claimed:
            await self.refuse(GolemConnected(f"A golem is already connected to {self.webstrate}."), before_upgrade=True)
            return
        await self.accept()
        if replaced:
            await send_patiently(self.channel_layer, replaced, {"type": "golem.replaced"}, timeout=2)
        self._heartbeat = asyncio.create_task(self._beat())
        # Minions already waiting announce themselves.
        await self.channel_layer.group_send(
            waiting_group(self.webstrate), {"type": "golem.arrived", "control": self.channel_name}
        )

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(settings.HERDER_PAIRING_HEARTBEAT)
            try:
                held = await _db(presence_refresh)(
                    webstrate=self.webstrate, channel=self.channel_name, proven=self.proven
                )
            except Exception:
                # The database may come back before the presence expires; if it
                # does not, the next successful beat finds the claim lost.
                logger.exception("refreshing the presence of golem %s failed", self.webstrate)
                continue
            if not held:
                self.claimed = False
                await self.refuse(GolemConnected("Another golem control socket took over."))
                return

    async def receive(self, text_data=None, bytes_data=None) -> None:
        # As in the original herder, what the golem says here is ignored.
        pass

    async def golem_replaced(self, message: dict) -> None:
        # The golem itself connected: its claim is no longer ours to release.
        self.claimed = False
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        await self.refuse(GolemConnected(f"The golem of {self.webstrate} connected."))

    async def golem_minion_connected(self, message: dict) -> None:
        await self.send(text_data=event("minion-connected", ID=message["id"], Type=message["minion_type"]))
        await send_patiently(
            self.channel_layer,
            message["reply_to"],
            {"type": "minion.announced", "control": self.channel_name},
            timeout=5,
        )

    async def golem_minion_disconnected(self, message: dict) -> None:
        await self.send(text_data=event("minion-disconnected", ID=message["id"]))

    async def disconnect(self, code) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self.claimed:
            await _db(presence_release)(webstrate=self.webstrate, channel=self.channel_name)


class MinionPairConsumer(_PairingConsumer):
    """ws /minion/v1/connect/<webstrate>?type=<type>: an ad-hoc minion. It gets an
    id and the golem is told; with no golem within HERDER_GOLEM_WAIT seconds it
    gets golem-not-found and the socket closes with 4404. Frames sent before the
    golem connects to it are kept and relayed then."""

    minion_id = ""
    minion_type = ""
    # The control socket that acknowledged us, and the one we last told.
    control: str | None = None
    announced_to: str | None = None
    _give_up: asyncio.Task | None = None
    _keep_alive: asyncio.Task | None = None
    _renew: asyncio.Task | None = None
    _gave_up = False
    _groups: tuple[str, ...] = ()

    async def connect(self) -> None:
        if not await self.webstrate_accepted():
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.minion_type = (query.get("type") or [""])[0][:128]
        self.minion_id = str(uuid.uuid4())
        self._new_outbox()
        # Accepted first: a golem may answer as soon as the groups are joined.
        await self.accept()
        self._groups = (minion_group(self.webstrate, self.minion_id), waiting_group(self.webstrate))
        for group in self._groups:
            await self.channel_layer.group_add(group, self.channel_name)
        self._renew = asyncio.create_task(self._renew_groups())
        control = await _db(self._find_golem)()
        # A golem arriving meanwhile has been told already.
        if control and self.announced_to is None:
            await self._announce(control)
        if self.control is None and self.peer is None:
            self._give_up = asyncio.create_task(self._give_up_later())
        if settings.HERDER_GOLEM_IDLE_TIMEOUT > 0:
            self._keep_alive = asyncio.create_task(self._keep_golem())

    def _find_golem(self) -> str | None:
        golem_touch(webstrate=self.webstrate)
        return presence_lookup(webstrate=self.webstrate)

    async def _keep_golem(self) -> None:
        """A connected minion is activity: its golem is not reaped as idle under it."""
        every = min(300.0, settings.HERDER_GOLEM_IDLE_TIMEOUT / 4)
        while True:
            await asyncio.sleep(every)
            try:
                await _db(golem_touch)(webstrate=self.webstrate)
            except Exception:
                logger.exception("recording the minion's activity on golem %s failed", self.webstrate)

    async def _renew_groups(self) -> None:
        """channels-redis drops a group member after group_expiry (a day): a
        minion connected for longer would no longer hear a golem arrive or a
        pairing request. Joining again refreshes the membership."""
        every = max(1.0, getattr(self.channel_layer, "group_expiry", 86400) / 4)
        while not self._gave_up:
            await asyncio.sleep(every)
            for group in () if self._gave_up else self._groups:
                try:
                    await self.channel_layer.group_add(group, self.channel_name)
                except Exception:
                    logger.exception("renewing the membership of %s failed", group)

    async def _announce(self, control: str) -> None:
        self.announced_to = control
        await send_patiently(
            self.channel_layer,
            control,
            {
                "type": "golem.minion_connected",
                "id": self.minion_id,
                "minion_type": self.minion_type,
                "reply_to": self.channel_name,
            },
            timeout=5,
        )

    async def _give_up_later(self) -> None:
        await asyncio.sleep(settings.HERDER_GOLEM_WAIT)
        if self.control is None and self.peer is None:
            self._gave_up = True
            for group in self._groups:
                await self.channel_layer.group_discard(group, self.channel_name)
            await self.send(text_data=event("golem-not-found", ID=self.webstrate))
            await self.close(code=4404)

    def _found(self) -> None:
        if self._give_up is not None:
            self._give_up.cancel()

    async def golem_arrived(self, message: dict) -> None:
        # A new control socket (a golem started or reloaded): unpaired minions present themselves.
        if self._gave_up:
            return
        if self.peer is None and message["control"] not in (self.control, self.announced_to):
            await self._announce(message["control"])

    async def minion_announced(self, message: dict) -> None:
        self.control = message["control"]
        self._found()

    async def pair_request(self, message: dict) -> None:
        golem = message["golem"]
        if self.peer is not None:
            await send_patiently(self.channel_layer, golem, {"type": "pair.refused"}, timeout=5)
            return
        self._found()
        await send_patiently(
            self.channel_layer, golem, {"type": "pair.accepted", "minion": self.channel_name}, timeout=5
        )
        await self.send(text_data=event("golem-connected"))
        self._paired(golem)

    async def peer_left(self) -> None:
        # The minion stays: the golem may connect to it again (after a reload).
        self._unpaired()
        await self.send(text_data=event("golem-disconnected"))

    async def disconnect(self, code) -> None:
        if self._give_up is not None:
            self._give_up.cancel()
        if self._renew is not None:
            self._renew.cancel()
        await self._leave_peer()
        control = self.control or self.announced_to
        if control:
            await send_patiently(
                self.channel_layer, control, {"type": "golem.minion_disconnected", "id": self.minion_id}, timeout=2
            )
        for group in self._groups:
            await self.channel_layer.group_discard(group, self.channel_name)


class GolemMinionConsumer(_PairingConsumer):
    """ws /golem/v1/connect-to/<webstrate>/<minion id>: the golem's socket to one
    minion. Unknown minion: 404; a minion already paired: 409; both before the
    upgrade where the server can, else close codes 4404 and 4409. When the minion
    leaves, this socket gets minion-disconnected and closes."""

    _timer: asyncio.Task | None = None

    def pairing_patience(self) -> float:
        # The minion's acceptance is on its way: a golem that starts sending at
        # once must not be refused for it.
        return settings.HERDER_PAIRING_REPLY_TIMEOUT

    @property
    def minion_id(self) -> str:
        return self.scope["url_route"]["kwargs"]["minion"]

    async def connect(self) -> None:
        try:
            webstrate_validate(self.webstrate)
            if not is_minion_id(self.minion_id):
                raise BadMinionId()
        except BadInput as exc:
            await self.refuse(exc)
            return
        self._new_outbox()
        if not can_refuse_before_upgrade(self.scope):
            # The refusal can only be a close code: accept at once, as before.
            await self.accept()
        self._timer = asyncio.create_task(self._no_answer())
        await self.channel_layer.group_send(
            minion_group(self.webstrate, self.minion_id), {"type": "pair.request", "golem": self.channel_name}
        )

    async def _no_answer(self) -> None:
        await asyncio.sleep(settings.HERDER_PAIRING_REPLY_TIMEOUT)
        if self.peer is None:
            await self.refuse(
                MinionNotFound(f"No minion {self.minion_id} is connected to {self.webstrate}."), before_upgrade=True
            )

    async def pair_accepted(self, message: dict) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self.accept()
        self._paired(message["minion"])

    async def pair_refused(self, message: dict) -> None:
        if self._timer is not None:
            self._timer.cancel()
        await self.refuse(MinionPaired(), before_upgrade=True)

    async def peer_left(self) -> None:
        crashed = self.peer is not None and self._last_heard_too_long()
        self._unpaired()
        if crashed:
            # The minion's process died: its control-socket event must come from here.
            control = await _db(presence_lookup)(webstrate=self.webstrate)
            if control:
                await send_patiently(
                    self.channel_layer, control, {"type": "golem.minion_disconnected", "id": self.minion_id}, timeout=2
                )
        await self.send(text_data=event("minion-disconnected", ID=self.minion_id))
        await self.close()

    def _last_heard_too_long(self) -> bool:
        return asyncio.get_running_loop().time() - self._last_heard > 3 * settings.HERDER_PAIRING_HEARTBEAT

    async def disconnect(self, code) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.peer is None and self._timer is not None:
            # The minion may have accepted us in the meantime: it must not wait for a ghost.
            await self.channel_layer.group_send(
                minion_group(self.webstrate, self.minion_id), {"type": "relay.closed", "from": self.channel_name}
            )
        await self._leave_peer()
