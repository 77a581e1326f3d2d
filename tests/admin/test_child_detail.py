"""Child detail (page 4): readable local times, a face's original photo on click, and a history in words
that includes the faces an import added."""

from __future__ import annotations

import re
from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from childface.db import Actor
from childface.services import importing
from childface.services.sample_data import ExampleDataset

from .conftest import LiveApi, enroll, texts, unique

LOCAL_TIME = re.compile(r"^\d{2} [A-Z][a-z]{2} \d{4}, \d{2}:\d{2}$")


def test_history_in_words_with_imports_local_times_and_the_original_photo(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    api = start_api()  # its own server: the shared one has these example photos enrolled
    child = enroll(api, example, "Ida Import", ["c006/portrait.jpg"])
    # two more photos of Ida come with an import
    table = importing.read_table(
        f"external_id,name,image\n{child['external_id']},Ida Import,c006/mirrored.jpg\n"
        f"{child['external_id']},Ida Import,c006/brighter.jpg\n"
    )
    result = importing.run_import(
        db=api.db, media=api.runtime.media, pipeline=api.runtime.pipeline,
        model_db_id=api.runtime.model_db_id, table=table,
        source=importing.FolderSource(example.images_dir, max_bytes=10_000_000),
        actor=Actor("user", "admin"), source_name=f"{unique('ida')}.csv",
        max_pixels=api.settings.max_image_pixels, after_commit=api.runtime.catch_up,
    )
    assert result.counts["imported"] == 2, result.counts

    at = signed_in(api, "viewer")
    at.session_state["child_id"] = child["id"]
    at.switch_page("views/child_detail.py").run()
    assert not at.exception, at.exception
    assert at.header[0].value == "Ida Import"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Photos enrolled"] == "3" and LOCAL_TIME.match(metrics["Added"]), metrics
    assert "Times are in the server's time zone" in texts(at)  # AppTest has no browser to ask

    history = at.dataframe[-1].value
    assert list(history["What"]) == ["Faces imported", "Photo enrolled", "Child added"]
    details = list(history["Details"])
    imported = r"Faces added from import \d+ \(this batch: 2 faces from 2 photos\)"
    assert re.fullmatch(imported, details[0]), details
    # enrolled over HTTP by a staff member: the admin's own upload route
    enrolled = r"Face \d+ of Ida Import enrolled from a photo uploaded in the admin"
    assert re.fullmatch(enrolled, details[1]), details
    assert details[2] == f"Ida Import (ID {child['external_id']}) added"
    assert all(LOCAL_TIME.match(when) for when in history["When"])
    assert set(history["Who"]) == {"admin"}

    # the original photo, with the face boxed, on click: staff only (a whole photo may show others)
    assert not [b for b in at.button if b.key and b.key.startswith("photo_")]
    at = signed_in(api, "staff")
    at.session_state["child_id"] = child["id"]
    at.switch_page("views/child_detail.py").run()
    faces = [b.key.removeprefix("photo_") for b in at.button if b.key and b.key.startswith("photo_")]
    assert len(faces) == 3
    shown = len(at.image)
    at.button(key=f"photo_{faces[0]}").click().run()
    assert not at.exception, at.exception
    assert f"Original photo of face {faces[0]}" in texts(at) and len(at.image) == shown + 1
    at.button(key=f"photo_{faces[0]}").click().run()
    assert len(at.image) == shown


def test_a_link_opens_the_child_and_a_search_finds_another(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    api = start_api()  # its own server: the shared one has these example photos enrolled
    first = enroll(api, example, "Lia Link", ["c007/portrait.jpg"])
    second = enroll(api, example, "Max Search", ["c008/portrait.jpg"])
    at = signed_in(api, "viewer")
    at.query_params["child"] = str(first["id"])
    at.switch_page("views/child_detail.py").run()
    assert at.header[0].value == "Lia Link"
    at.text_input(key="detail_find_search").input(second["external_id"]).run()
    at.selectbox(key="detail_find").set_value(second["id"]).run()
    assert not at.exception, at.exception
    assert at.header[0].value == "Max Search"
