"""Recognise (page 6) and Review (page 5): what staff use to check and correct the system."""

from __future__ import annotations

import re
from collections.abc import Callable

from streamlit.testing.v1 import AppTest

from childface.services.sample_data import ExampleDataset

from .conftest import LiveApi, client, enroll, photo, texts


def test_recognise_labels_the_enrolled_child(
    api: LiveApi, example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    enroll(api, example, "Finn Recognise", ["c006/portrait.jpg", "c006/mirrored.jpg"])
    at = signed_in(api, "staff")
    at.switch_page("views/recognise.py").run()
    at.file_uploader(key="recognise_file").upload("finn.jpg", photo(example, "c006/brighter.jpg"),
                                                  "image/jpeg").run()
    assert not at.exception, at.exception
    said = texts(at)
    assert "Face 1: Recognised: Finn Recognise" in said
    assert len(at.image) == 1
    candidates = at.dataframe[0].value
    assert candidates["Child"].iloc[0] == "Finn Recognise" and candidates["Similarity"].iloc[0] > 0.9

    at.file_uploader(key="recognise_file").upload("nobody.jpg", photo(example, "no-face.jpg"),
                                                  "image/jpeg").run()
    assert "No face found in this photo." in texts(at)


def test_review_queue_and_duplicates(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    # strict thresholds: a true match lands in review, and two records of one child look like duplicates
    strict = start_api(accept_threshold=0.999, review_threshold=0.5)
    enroll(strict, example, "Ada Review", ["c001/portrait.jpg"])
    enroll(strict, example, "Ada Again", ["c001/mirrored.jpg"])
    result = client(strict).post("/recognize", files={"file": ("a.jpg", photo(example, "c001/brighter.jpg"))})
    assert result["faces"][0]["decision"] == "review"

    at = signed_in(strict, "staff")
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    confirm = [b for b in at.button if b.key and b.key.endswith("_confirm")]
    assert len(confirm) == 1 and "It is Ada" in confirm[0].label
    confirm[0].click().run()
    assert "Confirmed." in texts(at) and "Nothing to review." in texts(at)
    resolved = client(strict).get("/review/queue", status="resolved")["items"]
    assert resolved[0]["resolution"] and resolved[0]["face"]["child_id"] in {
        c["id"] for c in client(strict).get("/children")["items"]}

    assert "look alike" in texts(at)
    _dup(at.checkbox, "sure").check().run()
    merge = _dup(at.button, "merge")
    merge.click().run()
    assert "Merged" in texts(at)
    children = client(strict).get("/children", status="active")["items"]
    assert len(children) == 1 and children[0]["n_faces"] >= 2  # both records' faces on one child


def test_review_shows_the_boxed_photo_and_where_it_came_from(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    strict = start_api(accept_threshold=0.999, review_threshold=0.5)
    enroll(strict, example, "Ben Source", ["c002/portrait.jpg"])
    probe = photo(example, "c002/brighter.jpg")
    (face,) = client(strict).post("/recognize", files={"file": ("b.jpg", probe)})["faces"]
    assert face["decision"] == "review" and face["review_queued"] is True

    at = signed_in(strict, "staff")
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    said = texts(at)
    sent = r"Sent for recognition on \d{2} \w{3} \d{4}, \d{2}:\d{2} by staff member admin\."
    assert re.search(sent, said), said
    # the whole photo with the face boxed, not only the crop
    (shown,) = [i for i in at.image if i.proto.imgs]
    assert shown.proto.imgs[0].url  # served by Streamlit's media store

    at.button(key=f"review_{face['review_id']}_dismiss").click().run()
    assert "Nothing to review." in texts(at)

    # the same photo again: the Recognise page says why it is not queued a second time
    at.switch_page("views/recognise.py").run()
    at.file_uploader(key="recognise_file").upload("b.jpg", probe, "image/jpeg").run()
    assert "Not added to the review list: this face of this photo was reviewed before." in texts(at)


def test_duplicates_offer_moving_the_one_wrong_face_and_not_the_same_child(
    start_api: Callable[..., LiveApi], example: ExampleDataset, signed_in: Callable[..., AppTest]
) -> None:
    # the duplicate threshold (the review threshold) sits above what Ada's and Bob's own photos score
    # with each other (0.898 without flip TTA, 0.908 with it) and below the wrong face's 0.99
    live = start_api(review_threshold=0.92)
    ada = enroll(live, example, "Ada Mixed", ["c001/portrait.jpg", "c001/mirrored.jpg"])
    bob = enroll(live, example, "Bob Mixed", ["c002/portrait.jpg", "c002/mirrored.jpg"])
    # a photo of Ada enrolled under Bob by mistake (past the consistency warning)
    wrong = client(live).post(f"/children/{bob['id']}/images", data={"confirm": "true"},
                              files=[("files", ("ada.jpg", photo(example, "c001/brighter.jpg")))])
    wrong_face = wrong["photos"][0]["enrolled_face_id"]
    assert wrong_face is not None, wrong

    at = signed_in(live, "staff")
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    assert f"One face of Bob Mixed (face {wrong_face}) looks like Ada Mixed" in texts(at)
    _dup(at.button, "move").click().run()
    assert not at.exception, at.exception
    assert f"Face {wrong_face} moved to Ada Mixed." in texts(at)
    assert wrong_face in [f["id"] for f in client(live).get(f"/children/{ada['id']}/faces")]
    assert "No children look enrolled twice." in texts(at)

    # two records that look alike but are different children (twins): dismissed for good
    enroll(live, example, "Cleo Twin", ["c003/portrait.jpg"])
    enroll(live, example, "Cleo Other", ["c003/mirrored.jpg"])
    at.run()
    moves = [b for b in at.button if (b.key or "").startswith("dup_") and b.key.endswith("_move")]
    assert "look alike" in texts(at) and not moves
    _dup(at.button, "dismiss").click().run()
    assert not at.exception, at.exception
    said = texts(at)
    assert "this pair will not be shown again" in said and "No children look enrolled twice." in said
    events = client(live).get("/audit", action="duplicates.dismissed")["items"]
    assert len(events) == 1 and events[0]["actor"] == "user:staff"


def _dup(widgets, what: str):  # noqa: ANN001, ANN202 - AppTest widget sequences
    """The first duplicate pair's widget (keys name the pair: `dup_<a>_<b>_<what>`)."""
    return next(w for w in widgets if (w.key or "").startswith("dup_") and w.key.endswith(f"_{what}"))
