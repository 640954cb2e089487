import asyncio
import json

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from rest_framework.exceptions import NotFound

from daemons.services import daemon_get
from herder.errors import RuntimeUnavailable
from herder.runtime import ContainerGone, Handle, get_runtime


class DaemonAttachConsumer(AsyncWebsocketConsumer):
    """ws /daemon/v1/attach/<name>: frames in go to the daemon's stdin; its
    stdout and stderr come out as frames (text when they are UTF-8)."""

    attachment = None
    pump = None

    async def connect(self) -> None:
        account = self.scope.get("account")
        if account is None:
            await self._refuse(401, "invalid_token", "A valid token is required.")
            return
        name = self.scope["url_route"]["kwargs"]["name"]
        try:
            daemon = await database_sync_to_async(daemon_get)(account=account, name=name)
        except NotFound:
            await self._refuse(404, "not_found", f"No daemon {name!r}.")
            return
        if not daemon.is_running or not daemon.container_id:
            await self._refuse(409, "not_running", f"Daemon {name!r} is {daemon.state}.")
            return
        try:
            self.attachment = await sync_to_async(get_runtime().attach)(
                Handle(id=daemon.container_id, name=daemon.full_name))
        except (ContainerGone, RuntimeUnavailable):
            await self._refuse(503, "runtime_unavailable", "Could not attach to the daemon.")
            return
        await self.accept()
        self.pump = asyncio.create_task(self._from_daemon())

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
