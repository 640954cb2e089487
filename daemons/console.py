"""The daemon console: xterm.js (vendored under static/daemons/xterm/) over
the attach WebSocket, for operators in the admin and for token holders.

- Operators: /admin/daemons/daemon/<pk>/console/ opens
  ws /admin/daemons/daemon/<pk>/attach with their admin session; the socket
  takes staff who may change daemons, from the herder's own origin only
  (staff_may_attach). No token is minted: nothing that outlives the page.
- Token holders: /daemon/v1/console/<name> is a static page under a strict
  CSP. The token is typed into it or passed in the URL's fragment
  (#token=...), which browsers never send to a server; the page drops the
  fragment at once and sends the token only in the socket's query, as every
  attach client does.

A daemon has no terminal (stdin open, no TTY), so the page edits a line
locally and sends it on Enter; resizing fits the terminal to the window only:
the attach protocol carries no window size.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.template.response import TemplateResponse

from daemons.models import Daemon
from herder.errors import error_response

# Only this origin's script and style; the socket to this origin; nothing may
# frame the page, post a form, or learn where the user came from.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "frame-ancestors 'none'; form-action 'none'; base-uri 'none'"
)


def _header(scope: dict, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def same_origin(scope: dict) -> bool:
    """The socket's Origin names the host it was opened on, or the herder's
    public URL (behind a proxy that rewrites Host): a page of the herder's own
    origin. A missing or "null" Origin is refused."""
    origin, host = _header(scope, b"origin"), _header(scope, b"host")
    if not origin or origin == "null":
        return False
    netloc = urlsplit(origin).netloc.lower()
    return netloc in (host.lower(), urlsplit(settings.HERDER_PUBLIC_URL).netloc.lower())


def staff_may_attach(scope: dict) -> bool:
    """Run in a thread (permissions come from the database)."""
    user = scope.get("user")
    return (
        same_origin(scope)
        and user is not None
        and user.is_active
        and user.is_staff
        and user.has_perm("daemons.change_daemon")
    )


def admin_console(model_admin, request: HttpRequest, daemon: Daemon) -> HttpResponse:
    from django.core.exceptions import PermissionDenied

    if not model_admin.has_operate_permission(request):
        raise PermissionDenied
    context = {
        **model_admin.admin_site.each_context(request),
        "title": f"Console of {daemon}",
        "daemon": daemon,
        "opts": Daemon._meta,
        "socket": f"/admin/daemons/daemon/{daemon.pk}/attach",
    }
    return TemplateResponse(request, "admin/daemons/daemon/console.html", context)


def token_console(request: HttpRequest, name: str) -> HttpResponse:
    """GET /daemon/v1/console/<name>: the page only; the socket checks the token."""
    if request.method not in ("GET", "HEAD"):
        response = error_response(405, "method_not_allowed", f'Method "{request.method}" not allowed.')
        response["Allow"] = "GET, HEAD"
        return response
    response = render(request, "daemons/console.html", {"name": name, "socket": f"/daemon/v1/attach/{name}"})
    response["Content-Security-Policy"] = CONSOLE_CSP
    response["Referrer-Policy"] = "no-referrer"
    response["Cache-Control"] = "no-store"
    return response
