"""Siblings and twins on Child detail, and the reasons of unsure decisions on Recognise and Review."""

from __future__ import annotations

from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from childface.services.sample_data import ExampleDataset

from .conftest import LiveApi, client, enroll, photo, texts, unique


def _open(at: AppTest, child_id: int) -> AppTest:
    at.session_state["child_id"] = child_id
    at.switch_page("views/child_detail.py").run()
    assert not at.exception, at.exception
    return at


def _links(at: AppTest) -> list[str]:
    return [link.proto.label for link in at.get("page_link")]


def test_mark_open_and_unmark_a_sibling_or_twin(api: LiveApi, signed_in: Callable[..., AppTest]) -> None:
    http = client(api)
    sia = http.post("/children", json={"external_id": unique("SIA"), "name": unique("Sia Sibling")})
    tom = http.post("/children", json={"external_id": unique("TOM"), "name": unique("Tom Twin")})

    at = _open(signed_in(api, "staff"), sia["id"])
    assert "Siblings and twins" in [s.value for s in at.subheader]
    assert f"No sibling or twin of {sia['name']} is marked." in texts(at)
    at.text_input(key="relation_other_search").input(tom["name"]).run()
    at.selectbox(key="relation_other").select(tom["id"]).run()
    at.radio(key="relation_kind").set_value("twin").run()
    at.button(key="relation_add").click().run()
    assert not at.exception, at.exception
    assert "Marked as twins." in texts(at)
    (relative,) = http.get(f"/children/{sia['id']}/relations")
    assert (relative["child_id"], relative["kind"]) == (tom["id"], "twin")
    # a link to the twin's page, and the change in words in the history
    assert _links(at) == [f"{tom['name']} ({tom['external_id']}) · twin"]
    history = at.dataframe[-1].value
    assert history["What"].iloc[0] == "Sibling or twin marked"
    marked = f"{sia['name']} and {tom['name']} ({tom['external_id']}) marked as twins"
    assert history["Details"].iloc[0] == marked

    # viewers see the link, not the controls
    viewer = _open(signed_in(api, "viewer"), tom["id"])
    assert _links(viewer) == [f"{sia['name']} ({sia['external_id']}) · twin"]
    assert not [b for b in viewer.button if b.key and b.key.startswith("relation_")]

    at.button(key=f"relation_remove_{tom['id']}").click().run()
    assert not at.exception, at.exception
    assert http.get(f"/children/{sia['id']}/relations") == []
    assert f"{tom['name']} is no longer marked as twin." in texts(at)
    at.run()  # AppTest keeps the last run's stale elements until the next run
    assert _links(at) == [] and f"No sibling or twin of {sia['name']} is marked." in texts(at)


def test_recognise_and_review_say_why_a_person_decides(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    live = start_api()  # its own server: one person enrolled as two children
    enroll(live, example, "Kim One", ["c003/portrait.jpg"])
    enroll(live, example, "Kim Two", ["c003/mirrored.jpg"])
    at = signed_in(live, "staff")
    at.switch_page("views/recognise.py").run()
    at.file_uploader(key="recognise_file").upload("kim.jpg", photo(example, "c003/brighter.jpg"),
                                                  "image/jpeg").run()
    assert not at.exception, at.exception
    why = "Another child looks almost as similar; several children look similar."
    assert f"Why: {why}" in texts(at)

    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    assert f"Why a person decides: {why}" in texts(at)
