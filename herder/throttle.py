"""Failed admin logins slowed, per client and per username.

Wraps the admin's login view (herder/urls.py routes /admin/login/ here
first). A client or a username with HERDER_ADMIN_LOGIN_RATE failures in the
current window is answered 429 before its password is judged. Per username
too, so guessing one operator's password from many addresses is slowed as
well; the price is that such guessing can lock that operator out for the
rest of the window.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from herder.admission import client_of, rate_count, rate_spent, request_scope
from herder.errors import TooManyRequests, api_error_response


def _buckets(request: HttpRequest) -> list[tuple[str, str]]:
    buckets = [("admin_login", client_of(request_scope(request)))]
    username = request.POST.get("username", "").strip().lower()[:150]
    if username:
        buckets.append(("admin_login_user", username))
    return buckets


def admin_login(request: HttpRequest, extra_context=None) -> HttpResponse:
    """admin.site.login, throttled on failed POSTs."""
    if request.method != "POST":
        return admin.site.login(request, extra_context)
    rate = settings.HERDER_ADMIN_LOGIN_RATE
    buckets = _buckets(request)
    try:
        for bucket, key in buckets:
            rate_spent(bucket, key, rate)
    except TooManyRequests as exc:
        return api_error_response(exc)
    response = admin.site.login(request, extra_context)
    # Success redirects; a failed login shows the form again (200).
    if response.status_code == 200:
        for bucket, key in buckets:
            rate_count(bucket, key, rate)
    return response
