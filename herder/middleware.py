"""Django's own middleware, run on the event loop instead of a thread hop per hook.

Under ASGI, Django runs every hook of a MiddlewareMixin middleware
(process_request, process_view, process_response) through sync_to_async: a
hop to the request's thread and back, about fifteen per request with the
usual stack. Each hop back waits its turn on the event loop, so when the loop
is busy (a flood being refused) one minion spawn waited fifteen turns before
its run even started: half a second.

The hooks of these middlewares only read and write the request and the
response (headers, cookies, lazy objects); none touches the database, so they
run inline here. The one that may (SessionMiddleware, which saves a session
that was changed) still hops, and only then.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.middleware import clickjacking, common, csrf, security


def _inline(base: type) -> type:
    """`base` with its hooks called directly on the event loop."""

    class Inline(base):
        async def __acall__(self, request):
            response = None
            if hasattr(self, "process_request"):
                response = self.process_request(request)
            response = response or await self.get_response(request)
            if hasattr(self, "process_response"):
                response = self.process_response(request, response)
            return response

        if hasattr(base, "process_view"):
            # A coroutine: Django's handler then awaits it instead of hopping.
            async def process_view(self, request, view_func, view_args, view_kwargs):
                return base.process_view(self, request, view_func, view_args, view_kwargs)

    Inline.__name__ = Inline.__qualname__ = base.__name__
    Inline.__module__ = __name__
    return Inline


SecurityMiddleware = _inline(security.SecurityMiddleware)
CommonMiddleware = _inline(common.CommonMiddleware)
# process_view reads request.POST on unsafe methods of views not exempt: a
# small form (the admin's), parsed in the handler's stack as before.
CsrfViewMiddleware = _inline(csrf.CsrfViewMiddleware)
# request.user stays lazy: it is loaded (a query) where it is used, in a view.
AuthenticationMiddleware = _inline(auth.AuthenticationMiddleware)
MessageMiddleware = _inline(messages.MessageMiddleware)
XFrameOptionsMiddleware = _inline(clickjacking.XFrameOptionsMiddleware)


class SessionMiddleware(sessions.SessionMiddleware):
    """The session store is made lazily (no query); saving a session that was
    read or changed may query, so only then does the answer hop to a thread."""

    async def __acall__(self, request):
        self.process_request(request)
        response = await self.get_response(request)
        if request.session.accessed or request.session.modified:
            return await sync_to_async(self.process_response, thread_sensitive=True)(request, response)
        return self.process_response(request, response)
