"""Recognise (page 6) and Review (page 5): what staff use to check and correct the system."""

from __future__ import annotations

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
    at.checkbox(key="dup_0_sure").check().run()
    merge = next(b for b in at.button if b.key == "dup_0_merge")
    merge.click().run()
    assert "Merged" in texts(at)
    children = client(strict).get("/children", status="active")["items"]
    assert len(children) == 1 and children[0]["n_faces"] >= 2  # both records' faces on one child
