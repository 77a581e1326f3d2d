"""Enroll (page 3) and Child detail (page 4): the photo-to-template flow and its corrections."""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Callable

import pytest
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
    at.file_uploader(key="enroll_files_0").set_value(uploads).run()
    assert not at.exception, at.exception
    said = texts(at)
    assert "No face found in this photo. It will not be sent." in said
    assert "**t1.jpg: 6 faces. Which one is Cleo Enroll?**" in said
    # the group photo large, and six large numbered crops to choose from (plus the two other photos)
    assert len(at.image) == 2 + 1 + 6
    (pick,) = [r for r in at.radio if (r.key or "").startswith("enroll_pick_0_")]  # keyed by the photo
    assert pick.value is None and pick.options == [f"Face {n}" for n in range(1, 7)]
    button = at.button(key="enroll_submit")
    assert button.disabled and button.label == "Enroll 2 photos for Cleo Enroll"  # no-face.jpg is not sent
    assert "Choose Cleo Enroll's face in every photo with several faces first (1 left)." in texts(at)

    found = at.session_state["detections"]
    faces = next(f["faces"] for f in found.values() if len(f["faces"]) == 6)
    wanted = max(range(6), key=lambda n: iou(faces[n]["box"], group_box(example, "C003")))
    at.radio(key=pick.key).set_value(wanted).run()
    assert not at.button(key="enroll_submit").disabled

    at.button(key="enroll_submit").click().run()
    assert not at.exception, at.exception
    said = texts(at)
    assert "2 of 2 photos enrolled for Cleo Enroll." in said
    assert "**portrait.jpg: Enrolled**" in said and "**t1.jpg: Enrolled**" in said
    # the uploads are cleared: a new, empty uploader
    assert at.session_state["enroll_generation"] == 1
    assert not at.file_uploader(key="enroll_files_1").value
    assert "3. Check the faces" not in said

    child = client(api).get("/children", q=external_id)["items"][0]
    stored = client(api).get(f"/children/{child['id']}/faces")
    assert len(stored) == 2
    # the box sent for the group photo is the chosen face's box
    assert any(iou(f["box"], faces[wanted]["box"]) > 0.9 for f in stored)


def test_a_taken_id_is_said_for_staff(
    api: LiveApi, signed_in: Callable[..., AppTest]
) -> None:
    taken = unique("T")
    client(api).post("/children", json={"external_id": taken, "name": "Dora Taken"})
    at = signed_in(api, "staff")
    at.switch_page("views/enroll.py").run()
    at.text_input(key="enroll_new_external_id").input(taken)
    at.text_input(key="enroll_new_name").input("Dora Again")
    click(at, "Add child")
    assert [e.value for e in at.error] == [
        f"A child with the ID '{taken}' already exists (Dora Taken). Choose them under \"Child\" below, "
        "or check the ID."]
    assert "external_id" not in texts(at)


@pytest.fixture(scope="module")
def fresh(start_api: Callable[..., LiveApi]) -> LiveApi:
    """An API of this module's own: its photos are enrolled by nobody else."""
    return start_api()


def test_a_stored_photo_is_said_for_staff(
    fresh: LiveApi, example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    eli = enroll(fresh, example, "Eli Twice", ["c005/mirrored.jpg"])
    at = signed_in(fresh, "staff")
    at.session_state["child_id"] = eli["id"]
    at.switch_page("views/enroll.py").run()
    at.file_uploader(key="enroll_files_0").set_value(
        [("again.jpg", photo(example, "c005/mirrored.jpg"), "image/jpeg")]).run()
    at.button(key="enroll_submit").click().run()
    said = texts(at)
    assert "**again.jpg: Already enrolled**" in said
    assert "This photo is already enrolled for Eli Twice." in said
    assert not re.search(r"(face|child) \d", said)  # no ids for staff


def test_a_face_unlike_the_child_asks_for_a_confirmation(
    fresh: LiveApi, example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    ivy = enroll(fresh, example, "Ivy Check", ["c001/portrait.jpg", "c001/mirrored.jpg"])
    enroll(fresh, example, "Jon Other", ["c002/portrait.jpg"])
    at = signed_in(fresh, "staff")
    at.session_state["child_id"] = ivy["id"]
    at.switch_page("views/enroll.py").run()
    wrong = photo(example, "c002/brighter.jpg")  # Jon's face, sent for Ivy
    at.file_uploader(key="enroll_files_0").set_value([("jon.jpg", wrong, "image/jpeg")]).run()
    assert at.button(key="enroll_submit").label == "Enroll 1 photo for Ivy Check"
    at.button(key="enroll_submit").click().run()
    assert not at.exception, at.exception
    said = texts(at)
    assert "0 of 1 photo enrolled for Ivy Check." in said
    assert "**jon.jpg: Waiting for your confirmation**" in said
    warning = [w.value for w in at.warning if "looks more like" in w.value]
    assert warning and "Jon Other" in warning[0] and "than like Ivy Check" in warning[0]
    assert len(client(fresh).get(f"/children/{ivy['id']}/faces")) == 2

    key = hashlib.sha256(wrong).hexdigest()[:16]
    assert at.button(key=f"enroll_anyway_{key}").disabled
    at.checkbox(key=f"enroll_sure_{key}").check().run()
    at.button(key=f"enroll_anyway_{key}").click().run()
    assert not at.exception, at.exception
    said = texts(at)
    assert "**jon.jpg: Enrolled**" in said and "1 of 1 photo enrolled for Ivy Check." in said
    faces = client(fresh).get(f"/children/{ivy['id']}/faces")
    assert len(faces) == 3
    events = client(fresh).get("/audit", action="face.enrolled", child_id=ivy["id"])["items"]
    confirmed = [e for e in events if "confirmed_despite_check" in e["after"]]
    assert len(confirmed) == 1 and confirmed[0]["after"]["confirmed_despite_check"]["rule"] == (
        "closer_to_other_child")


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
    at.text_input(key="move_target_search").input("Dev Twin").run()
    at.selectbox(key="move_target").set_value(twin["id"]).run()
    at.button(key=f"move_{moved}").click().run()
    assert "Face moved to Dev Twin" in texts(at)
    assert [f["id"] for f in client(api).get(f"/children/{child['id']}/faces")] == [faces[2]["id"]]

    at.text_input(key="merge_source_search").input(twin["external_id"]).run()
    at.selectbox(key="merge_source").set_value(twin["id"]).run()
    assert at.button(key="merge_button").disabled
    at.checkbox(key="merge_sure").check().run()
    at.button(key="merge_button").click().run()
    assert "Merged: 2 face(s) moved here." in texts(at)
    merged = client(api).get(f"/children/{twin['id']}")
    assert merged["status"] == "archived" and merged["merged_into_id"] == child["id"]
    history = set(at.dataframe[-1].value["What"])  # the history is the page's last table
    assert {"Child added", "Photo enrolled", "Face removed", "Children merged"} <= history
