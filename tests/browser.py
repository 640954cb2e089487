"""Real headless Chromium for browser-facing tests (Debian's chromium, driven
by Playwright: no browser download, `executable_path` is the system's).

    from tests.browser import browser  # noqa: F401  (a module-scoped fixture)

    def test_page(browser):
        page = browser.new_page()
        page.goto(url)

Playwright's sync API runs its own event loop in this thread: call Django's ORM
from such tests only through `sync_to_async`-free code paths (plain functions in
another thread), or set DJANGO_ALLOW_ASYNC_UNSAFE as the fixture does.
"""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


# Per module, not per session: while Playwright's sync API runs, its event loop
# counts as running in this thread, and any later asyncio.run() here would fail.
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail("Chromium is missing: deploy/setup.sh installs Debian's chromium.")
    # Playwright's loop makes Django think it is called from async code.
    os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as p:
        # Chromium resolves *.localhost to loopback itself: separate origins, no DNS.
        launched = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            launched.close()
