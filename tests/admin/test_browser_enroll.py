"""In a real browser: enroll a child from a group photo by picking the child's face; nothing is preselected.

Headless Chromium through Playwright against the admin served by Streamlit
(the `admin_url` fixture of test_browser_e2e.py) and a real API.
"""

from __future__ import annotations

import pytest

from childface.services.enrollment import iou
from childface.services.sample_data import ExampleDataset

from .conftest import LiveApi, client, photo, unique
from .test_browser_e2e import (  # noqa: F401 - admin_url is a fixture
    CHROMIUM,
    CHROMIUM_ARGS,
    TIMEOUT_MS,
    add_child_on_enroll_page,
    admin_url,
    idle,
    sign_in,
)
from .test_enroll import group_box

pytestmark = pytest.mark.browser


def test_enroll_from_a_group_photo_by_picking_the_face_in_chromium(
    api: LiveApi, admin_url: str, example: ExampleDataset  # noqa: F811 - the imported fixture
) -> None:
    if not CHROMIUM.is_file():
        pytest.skip("Debian's chromium is not at /usr/bin/chromium (`make install-dev` installs it)")
    from playwright.sync_api import expect, sync_playwright

    group = photo(example, "group/t1.jpg")
    faces = client(api).post("/detect", files={"file": ("t1.jpg", group)})["faces"]
    wanted = max(range(len(faces)), key=lambda n: iou(faces[n]["box"], group_box(example, "C005")))
    assert wanted != 0  # not the face a default would have chosen
    name = unique("Gia Group")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        try:
            sign_in(page, admin_url, "staff")

            add_child_on_enroll_page(page, name)

            page.locator('input[type="file"]').first.set_input_files(str(example.images_dir / "group/t1.jpg"))
            expect(page.get_by_text(f"t1.jpg: {len(faces)} faces. Which one is {name}?")).to_be_visible()
            enroll = page.get_by_role("button", name=f"Enroll 1 photo for {name}")
            expect(enroll).to_be_disabled()  # no face is chosen for the person
            choices = page.get_by_role("radiogroup")
            expect(choices.get_by_role("radio", checked=True)).to_have_count(0)
            choices.get_by_text(f"Face {wanted + 1}", exact=True).click()
            expect(enroll).to_be_enabled()
            enroll.click()
            expect(page.get_by_text(f"1 of 1 photo enrolled for {name}.")).to_be_visible()
            expect(page.get_by_text("t1.jpg: Enrolled")).to_be_visible()

            idle(page)
            page.get_by_role("link", name="Child detail").click()  # the child just added
            expect(page.get_by_role("heading", name=name)).to_be_visible()
            expect(page.get_by_test_id("stMetric").filter(has_text="Photos enrolled")).to_contain_text("1")
        finally:
            browser.close()

    child = next(c for c in client(api).get("/children", q=name.replace(" ", "-"))["items"])
    (stored,) = client(api).get(f"/children/{child['id']}/faces")  # one face: the chosen one
    assert max(abs(a - b) for a, b in zip(stored["box"], faces[wanted]["box"], strict=True)) < 1.0
