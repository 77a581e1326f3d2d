"""In a real browser: a reload keeps staff signed in (session cookie); signing out, or the end of the API
session, signs them out for good."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import requests

from .conftest import PASSWORDS, LiveApi
from .test_browser_e2e import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, admin_url  # noqa: F401 - a fixture

pytestmark = pytest.mark.browser
COOKIE = "childface_session"


@pytest.fixture(scope="module")
def api(start_api: Callable[..., LiveApi]) -> LiveApi:
    """This module's own API: its many sign-ins stay clear of the shared one's per-address rate limit."""
    return start_api(rate_limit_unauthenticated="1000/minute")


def test_reload_keeps_the_session_and_sign_out_ends_it(admin_url: str, api: LiveApi) -> None:  # noqa: F811
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not at /usr/bin/chromium (`make install-dev` installs it)")
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)

        def sign_in() -> dict:
            page.get_by_role("textbox", name="Username").fill("staff")
            page.get_by_role("textbox", name="Password").fill(PASSWORDS["staff"])
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Children")).to_be_visible()
            return wait_for_cookie(present=True)

        def wait_for_cookie(*, present: bool) -> dict:
            deadline = time.monotonic() + 30
            while True:
                found = [c for c in context.cookies() if c["name"] == COOKIE]
                if bool(found) == present:
                    return found[0] if found else {}
                assert time.monotonic() < deadline, f"cookie {'never set' if present else 'not cleared'}"
                page.wait_for_timeout(200)

        def signed_out() -> None:
            expect(page.get_by_role("textbox", name="Username")).to_be_visible()
            expect(page.get_by_role("heading", name="Children")).not_to_be_visible()

        try:
            page.goto(admin_url)
            cookie = sign_in()
            assert cookie["sameSite"] == "Strict" and cookie["secure"] is False  # plain http here
            lifetime = cookie["expires"] - time.time()
            assert abs(lifetime - api.settings.session_ttl_minutes * 60) < 120, lifetime

            page.reload()
            expect(page.get_by_role("heading", name="Children")).to_be_visible()
            expect(page.get_by_text("Signed in as staff")).to_be_visible()

            page.get_by_role("button", name="Sign out").click()
            signed_out()
            wait_for_cookie(present=False)
            page.reload()
            signed_out()

            # a cookie whose API session ended (here: signed out from elsewhere) signs nobody in
            token = sign_in()["value"]
            ended = requests.post(f"{api.url}/auth/logout", headers={"Authorization": f"Bearer {token}"},
                                  timeout=10)
            assert ended.status_code == 204
            page.reload()
            signed_out()
            wait_for_cookie(present=False)
        finally:
            browser.close()
