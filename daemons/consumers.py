import asyncio
import json

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from rest_framework.exceptions import NotFound

from daemons.models import Daemon
from daemons.services import daemon_get
from herder.errors import RuntimeUnavailable
from herder.runtime import ContainerGone, Handle, get_runtime


class DaemonAttachConsumer(AsyncWebsocketConsumer):
    """ws /daemon/v1/attach/<name>: frames in go to the daemon's stdin; its
    stdout and stderr come out as frames (text when they are UTF-8)."""

    attachment = None
    pump = None

    async def connect(self) -> None:
        daemon = await self._daemon()
        if daemon is None:
            return
        name = daemon.name
        if not daemon.is_running or not daemon.container_id:
            await self._refuse(409, "not_running", f"Daemon {name!r} is {daemon.state}.")
            return
        try:
            self.attachment = await sync_to_async(get_runtime().attach)(
                Handle(id=daemon.container_id, name=daemon.full_name)
            )
        except (ContainerGone, RuntimeUnavailable):
            await self._refuse(503, "runtime_unavailable", "Could not attach to the daemon.")
            return
        await self.accept()
        self.pump = asyncio.create_task(self._from_daemon())

    async def _daemon(self) -> Daemon | None:
        """The daemon this socket attaches to, or None once refused."""
        account = self.scope.get("account")
        if account is None:
            await self._refuse(401, "invalid_token", "A valid token is required.")
            return None
        name = self.scope["url_route"]["kwargs"]["name"]
        try:
            return await database_sync_to_async(daemon_get)(account=account, name=name)
        except NotFound:
            await self._refuse(404, "not_found", f"No daemon {name!r}.")
            return None

    async def _refuse(self, status: int, code: str, detail: str) -> None:
        # Accept first so the client can read why before the close.
        await self.accept()
        await self.send(text_data=json.dumps({"type": "error", "code": code, "detail": detail}))
        await self.close(code=4000 + status)

    async def _from_daemon(self) -> None:
        while True:
            frame = await self.attachment.aread_frame()
            if frame is None:
                break
            _, data = frame
            try:
                await self.send(text_data=data.decode("utf-8"))
            except UnicodeDecodeError:
                await self.send(bytes_data=data)
        await self.close()

    async def receive(self, text_data=None, bytes_data=None) -> None:
        if self.attachment is not None:
            await self.attachment.asend(bytes_data if bytes_data is not None else text_data.encode())

    async def disconnect(self, code) -> None:
        if self.pump is not None:
            self.pump.cancel()
        if self.attachment is not None:
            self.attachment.close()


class DaemonStaffAttachConsumer(DaemonAttachConsumer):
    """ws /admin/daemons/daemon/<pk>/attach: the admin's console. Staff who may
    operate daemons, by their admin session (channels' AuthMiddlewareStack in
    herder/routing.py), from a page of the herder's own origin only: the
    Origin must name the very host the socket was opened on, so no other site
    (a daemon's origin, even one under the herder's domain, or a sandboxed
    path-route page, whose Origin is "null") rides the operator's cookie."""

    async def _daemon(self) -> Daemon | None:
        from daemons.console import staff_may_attach

        if not await database_sync_to_async(staff_may_attach)(self.scope):
            await self._refuse(403, "permission_denied", "Staff who may operate daemons, from the admin only.")
            return None
        pk = self.scope["url_route"]["kwargs"]["pk"]
        daemon = await database_sync_to_async(Daemon.objects.filter(pk=pk).first)()
        if daemon is None:
            await self._refuse(404, "not_found", f"No daemon {pk}.")
        return daemon
