"""Needs new photos (admin page): stale children by group, each opening on its page or on Enroll; and the
child page saying how old each photo is and where its date came from."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

from PIL import Image as PILImage
from streamlit.testing.v1 import AppTest

from childface.services.sample_data import ExampleDataset

from .conftest import LiveApi, client, photo, texts

#: the face caption's photo age, e.g. "· photo 3 years 7 months old (from EXIF)"
AGE = re.compile(r"· photo \d+ years?( \d+ months?)? old \(from EXIF\)$")


def dated(data: bytes, stamp: str) -> bytes:
    exif = PILImage.Exif()
    exif.get_ifd(0x8769)[36867] = stamp
    out = io.BytesIO()
    PILImage.open(io.BytesIO(data)).save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def add(live: LiveApi, external_id: str, name: str, group: str, *photos: bytes) -> int:
    api = client(live)
    child = api.post("/children", json={"external_id": external_id, "name": name, "group": group})
    for data in photos:
        result = api.post(f"/children/{child['id']}/images", files=[("files", ("p.jpg", data))],
                          data={"confirm": "true"})
        assert result["enrolled"] == 1, result
    return child["id"]


def test_stale_children_by_group_open_on_their_page_or_on_enroll(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    api = start_api()
    ola = add(api, "OLA", "Ola Old", "Bears",
              dated(photo(example, "c001/portrait.jpg"), "2023:04:01 10:00:00"))
    nia = add(api, "NIA", "Nia None", "Bears")
    add(api, "NED", "Ned New", "Bears", photo(example, "c002/portrait.jpg"))  # no EXIF: dated today
    add(api, "OWE", "Owen Owl", "Owls", dated(photo(example, "c003/portrait.jpg"), "2022:04:01 10:00:00"))

    at = signed_in(api, "staff")
    at.switch_page("views/needs_photos.py").run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Needs new photos"
    said = texts(at)
    assert "Photos too old (2)" in said and "No photos (1)" in said
    assert "**Bears**" in said and "**Owls**" in said and "Ned New" not in said
    assert "Ola Old (OLA)" in said and "(from EXIF)" in said and "years" in said
    at.selectbox(key="needs_group").select("Owls").run()
    said = texts(at)
    assert "Owen Owl (OWE)" in said and "Ola Old" not in said and "No photos (0)" in said

    at.selectbox(key="needs_group").select("Bears").run()
    at.button(key=f"needs_stale_open_{ola}").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Child detail" and at.header[0].value == "Ola Old"
    assert any(AGE.search(c.value) for c in at.caption), texts(at)

    at.switch_page("views/needs_photos.py").run()
    at.button(key=f"needs_none_enroll_{nia}").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value == "Enroll photos"
    assert at.selectbox(key="enroll_child").value == nia

    viewer = signed_in(api, "viewer")  # reads, does not enroll
    viewer.switch_page("views/needs_photos.py").run()
    assert not [b for b in viewer.button if b.key and "_enroll_" in b.key]
    assert [b for b in viewer.button if b.key == f"needs_stale_open_{ola}"]


def test_photo_ages_and_automatic_templates_in_words() -> None:
    from datetime import UTC, datetime

    from admin_ui import describe

    now = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    ages = [describe.age_words(when, now) for when in (
        "2026-11-26T08:00:00Z", "2026-11-14T08:00:00+00:00", "2026-08-20T08:00:00Z", "2025-11-20T08:00:00Z",
        "2024-08-01T08:00:00Z", "2026-11-27T08:00:00Z")]
    assert ages == ["today", "12 days old", "3 months old", "1 year old", "2 years 3 months old", "today"]
    assert describe.photo_age("2026-08-20T08:00:00Z", "exif", now) == "3 months old (from EXIF)"
    assert describe.photo_age("2026-08-20T08:00:00Z", "upload", now) == "3 months old (upload date)"
    assert describe.photo_age(None, None, now) == ""
    event = {"action": "face.auto_template", "child_id": 1, "target_id": "9",
             "after": {"face_id": 9, "retired_face_ids": [3, 4], "source": "recognition"}}
    assert describe.sentence(event, lambda cid: "Ada (A1)") == (
        "Face 9 of Ada (A1) kept as a new photo (a recognition far above the threshold); "
        "2 older photos retired (kept, no longer used)")
    assert describe.action_words("face.auto_template") == "New photo kept automatically"
