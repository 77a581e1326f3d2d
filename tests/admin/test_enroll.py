"""Enroll (page 3) and Child detail (page 4): the photo-to-template flow and its corrections."""

from __future__ import annotations

import csv
from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from childface.services.enrollment import iou
from childface.services.sample_data import ExampleDataset

from .conftest import LiveApi, click, client, enroll, photo, texts, unique


def group_box(example: ExampleDataset, child: str) -> list[float]:
    """The example CSV's box (x1, y1, x2, y2) of `child` in the group photo."""
    for row in csv.DictReader(example.csv_path.open()):
        if row["child_id"] == child and row["image"] == "group/t1.jpg":
            x, y, w, h = (float(row[k]) for k in "xywh")
            return [x, y, x + w, y + h]
    raise AssertionError(f"{child} is not in the group photo")


def test_enroll_new_child_from_uploads_with_a_face_chosen_in_a_group_photo(
    api: LiveApi, example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    at = signed_in(api, "staff")
    at.switch_page("views/enroll.py").run()
    external_id = unique("E")
    at.text_input(key="enroll_new_external_id").input(external_id)
    at.text_input(key="enroll_new_name").input("Cleo Enroll")
    click(at, "Add child")
    assert "Added Cleo Enroll" in texts(at)
    picker = at.selectbox(key="enroll_child")
    assert "Cleo Enroll" in picker.format_func(picker.value)

    uploads = [("portrait.jpg", photo(example, "c003/portrait.jpg"), "image/jpeg"),
               ("t1.jpg", photo(example, "group/t1.jpg"), "image/jpeg"),
               ("no-face.jpg", photo(example, "no-face.jpg"), "image/jpeg")]
    at.file_uploader(key="enroll_files").set_value(uploads).run()
    assert not at.exception, at.exception
    assert len(at.image) == 3
    assert "No face found in this photo." in texts(at)
    # six faces in the group photo: staff pick the child's one
    found = at.session_state["detections"]
    faces = next(f["faces"] for f in found.values() if len(f["faces"]) == 6)
    wanted = max(range(6), key=lambda n: iou(faces[n]["box"], group_box(example, "C003")))
    at.selectbox(key="enroll_pick_1_t1.jpg").set_value(wanted).run()

    at.button(key="enroll_submit").click().run()
    assert not at.exception, at.exception
    said = texts(at)
    assert "2 of 3 photo(s) enrolled." in said
    assert "**portrait.jpg: Enrolled**" in said and "**t1.jpg: Enrolled**" in said
    assert "**no-face.jpg: Not enrolled**" in said and "no face found" in said

    child = client(api).get("/children", q=external_id)["items"][0]
    stored = client(api).get(f"/children/{child['id']}/faces")
    assert len(stored) == 2
    assert any(iou(f["box"], group_box(example, "C003")) > 0.5 for f in stored)


def test_child_detail_remove_move_merge_and_history(
    api: LiveApi, example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    child = enroll(api, example, "Dev Detail",
                   ["c004/portrait.jpg", "c004/mirrored.jpg", "c004/brighter.jpg"])
    twin = enroll(api, example, "Dev Twin", ["c005/portrait.jpg"])
    faces = client(api).get(f"/children/{child['id']}/faces")
    at = signed_in(api, "staff")
    at.session_state["child_id"] = child["id"]
    at.switch_page("views/child_detail.py").run()
    assert not at.exception, at.exception
    assert at.header[0].value == "Dev Detail"
    assert [m.value for m in at.metric][:3] == [child["external_id"], "-", "3"]
    assert len(at.image) == 3

    removed, moved = faces[0]["id"], faces[1]["id"]
    at.button(key=f"remove_{removed}").click().run()
    at.button(key=f"remove_yes_{removed}").click().run()
    assert "Face removed." in texts(at)
    at.selectbox(key=f"move_to_{moved}").set_value(twin["id"]).run()
    at.button(key=f"move_{moved}").click().run()
    assert "Face moved to Dev Twin" in texts(at)
    assert [f["id"] for f in client(api).get(f"/children/{child['id']}/faces")] == [faces[2]["id"]]

    at.selectbox(key="merge_source").set_value(twin["id"]).run()
    assert at.button(key="merge_button").disabled
    at.checkbox(key="merge_sure").check().run()
    at.button(key="merge_button").click().run()
    assert "Merged: 2 face(s) moved here." in texts(at)
    merged = client(api).get(f"/children/{twin['id']}")
    assert merged["status"] == "archived" and merged["merged_into_id"] == child["id"]
    history = set(at.dataframe[0].value["What"])
    assert {"child.created", "face.enrolled", "face.removed", "child.merged"} <= history
