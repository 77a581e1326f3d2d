"""End to end in a real browser: sign in, enroll a child from a photo, recognise another photo of them.

Headless Chromium (Debian's `chromium`, installed by `make install-dev`) driven
by Playwright's Python package, against the admin served by Streamlit in a
subprocess, talking to a real API (real database, real models).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from childface.services.sample_data import ExampleDataset

from .conftest import PASSWORDS, REPO, LiveApi, _free_port, unique

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.browser


@pytest.fixture
def admin_url(api: LiveApi, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "CHILDFACE_API_URL": api.url}
    log = (tmp_path / "streamlit.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(REPO / "admin_ui" / "app.py"),
         "--server.address", "127.0.0.1", "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/_stcore/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "streamlit did not start"
            time.sleep(0.3)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def idle(page) -> None:  # noqa: ANN001 - playwright's Page, imported late
    """Wait until the page's script run has ended (a click during a run can be lost in its rerun)."""
    page.wait_for_selector('[data-testid="stStatusWidgetRunningIcon"]', state="detached")


def open_new_child_form(page):  # noqa: ANN001, ANN201 - playwright's Page and Locator, imported late
    """Open the Enroll page's "add a new child" expander (unless it is open) and return its ID field.

    A closed expander keeps its fields in the page, visible to a locator but inert: ask the
    expander itself whether it is open.
    """
    from playwright.sync_api import expect

    summary = page.get_by_text("The child is not in the list")
    expect(summary).to_be_visible()
    details = page.locator("details").filter(has_text="The child is not in the list").first
    if details.get_attribute("open") is None:
        summary.click()
    new_id = page.get_by_role("textbox", name="ID (as in your records)")
    expect(new_id).to_be_editable()
    return new_id


def add_child_on_enroll_page(page, name: str) -> None:  # noqa: ANN001 - playwright's Page
    """Open the Enroll page and add a child (ID: the name with dashes) through its form."""
    from playwright.sync_api import expect

    page.get_by_role("link", name="Enroll").click()
    expect(page.get_by_role("heading", name="Enroll photos")).to_be_visible()
    idle(page)
    open_new_child_form(page).fill(name.replace(" ", "-"))
    page.get_by_role("textbox", name="Name", exact=True).fill(name)
    idle(page)
    page.get_by_role("button", name="Add child").click()
    expect(page.get_by_text(f"Added {name}.")).to_be_visible()


def sign_in(page, admin_url: str, user: str) -> None:  # noqa: ANN001 - playwright's Page, imported late
    """Open the admin and sign in as one of the suite's staff accounts; the Children page shows."""
    from playwright.sync_api import expect

    page.goto(admin_url)
    page.get_by_role("textbox", name="Username").fill(user)
    page.get_by_role("textbox", name="Password").fill(PASSWORDS[user])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Children")).to_be_visible()


def test_sign_in_enroll_and_recognise_in_chromium(
    admin_url: str, example: ExampleDataset, tmp_path: Path
) -> None:
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not at /usr/bin/chromium (`make install-dev` installs it)")
    from playwright.sync_api import expect, sync_playwright

    name = unique("Ben Browser")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            sign_in(page, admin_url, "staff")

            add_child_on_enroll_page(page, name)

            page.locator('input[type="file"]').first.set_input_files(str(example.images_dir / "c002" /
                                                                         "portrait.jpg"))
            expect(page.get_by_text("Face 1: good")).to_be_visible()
            page.get_by_role("button", name=f"Enroll 1 photo for {name}").click()
            expect(page.get_by_text(f"1 of 1 photo enrolled for {name}.")).to_be_visible()

            page.get_by_role("link", name="Recognise").click()
            expect(page.get_by_role("heading", name="Recognise")).to_be_visible()
            page.locator('input[type="file"]').first.set_input_files(str(example.images_dir / "c002" /
                                                                         "brighter.jpg"))
            match = page.get_by_text(f"Face 1: Recognised: {name}")
            expect(match).to_be_visible()
            page.screenshot(path=str(tmp_path / "recognised.png"), full_page=True)
            assert f"Recognised: {name}" in page.inner_text("body")
        finally:
            browser.close()
    assert (tmp_path / "recognised.png").stat().st_size > 10_000
