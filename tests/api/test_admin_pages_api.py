"""What the admin's pages read from the API: one-request children pages, complete child histories,
original photos, where a review item came from, and duplicates staff dismissed or can fix by one move."""

from __future__ import annotations

import io
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image

from childface.db import Actor
from childface.services import importing

from .support import Photos, create_child, enroll, recognize


def test_children_sort_exact_external_id_and_thumbnail(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff, viewer = auth("staff"), auth("viewer")
    ids = {name: create_child(client, staff, ext, name) for ext, name in
           [("C-2", "bea"), ("C-10", "Ada"), ("C-1", "Cleo"), ("C-20", "Ada B")]}
    enroll(client, staff, ids["Cleo"], photos.person(1, 0), photos.person(1, 1))
    first_face = enroll(client, staff, ids["bea"], photos.person(2, 0))["photos"][0]["enrolled_face_id"]

    def names(**params: object) -> list[str]:
        response = client.get("/children", params=params, headers=viewer)
        assert response.status_code == 200, response.text
        return [c["name"] for c in response.json()["items"]]

    assert names() == ["Ada", "Ada B", "bea", "Cleo"]  # by name, regardless of case
    assert names(order="desc") == ["Cleo", "bea", "Ada B", "Ada"]
    assert names(sort="external_id") == ["Cleo", "Ada", "bea", "Ada B"]
    assert names(sort="faces", order="desc")[:2] == ["Cleo", "bea"]
    assert names(sort="created") == ["bea", "Ada", "Cleo", "Ada B"]
    assert names(sort="created", order="desc", limit=2, offset=1) == ["Cleo", "Ada"]
    # an exact external id, not a search: C-1 is not C-10
    exact = client.get("/children", params={"external_id": "C-1"}, headers=viewer).json()
    assert exact["total"] == 1 and exact["items"][0]["name"] == "Cleo"
    assert client.get("/children", params={"external_id": "C-3"}, headers=viewer).json()["total"] == 0
    # a row carries what the Children page shows: the count and the picture's face
    bea = client.get("/children", params={"external_id": "C-2"}, headers=viewer).json()["items"][0]
    assert bea["n_faces"] == 1 and bea["thumbnail_face_id"] == first_face
    assert client.get(f"/children/{ids['bea']}", headers=viewer).json()["thumbnail_face_id"] == first_face
    assert client.get(f"/children/{ids['Ada']}", headers=viewer).json()["thumbnail_face_id"] is None
    for bad in ({"sort": "age"}, {"order": "up"}, {"external_id": ""}):
        assert client.get("/children", params=bad, headers=viewer).status_code == 422


def test_history_has_import_batches_merges_moves_and_the_erasure(
    client: TestClient, auth, photos: Photos, runtime, tmp_path: Path  # noqa: ANN001
) -> None:
    staff, admin = auth("staff"), auth("admin")
    ada = create_child(client, staff, "ADA", "Ada")
    enroll(client, staff, ada, photos.person(3, 0))
    # faces added by an import are in the child's history (the batch's event concerns Ada)
    folder = tmp_path / "photos"
    folder.mkdir()
    for n in (1, 2):
        (folder / f"ada{n}.jpg").write_bytes(photos.person(3, n))
    table = importing.read_table("external_id,name,image\nADA,Ada,ada1.jpg\nADA,Ada,ada2.jpg\n")
    result = importing.run_import(
        db=runtime.db, media=runtime.media, pipeline=runtime.pipeline, model_db_id=runtime.model_db_id,
        table=table, source=importing.FolderSource(folder, max_bytes=10_000_000),
        actor=Actor("user", "staff"), source_name="ada.csv", max_pixels=runtime.settings.max_image_pixels,
        after_commit=runtime.catch_up,
    )
    assert result.counts["imported"] == 2, result.counts

    def history(child_id: int) -> list[str]:
        response = client.get(f"/children/{child_id}/history", headers=auth("viewer"))
        assert response.status_code == 200, response.text
        return [e["action"] for e in response.json()["items"]]

    assert history(ada) == ["import.batch", "face.enrolled", "child.created"]
    # a merge is in the source's history, a face moved away is in its old owner's history
    twin = create_child(client, staff, "ADA-2", "Ada twice")
    enroll(client, staff, twin, photos.person(3, 3))
    assert client.post(f"/children/{ada}/merge", json={"source_id": twin}, headers=staff).status_code == 200
    assert history(twin)[0] == "child.merged"
    other = create_child(client, staff, "OTHER", "Other")
    face_id = client.get(f"/children/{ada}/faces", headers=staff).json()[0]["id"]
    moved = client.post(f"/faces/{face_id}/reassign", json={"child_id": other}, headers=staff)
    assert moved.status_code == 200, moved.text
    assert history(ada)[0] == "face.reassigned" and history(other)[0] == "face.reassigned"
    # erasure: the erased children's histories keep the tombstone (and only redacted events)
    erased = client.post(f"/children/{ada}/erase", json={"confirm": "ERASE"}, headers=admin)
    assert erased.status_code == 200, erased.text
    for child_id in (ada, twin):
        assert history(child_id)[0] == "child.erased"


def test_original_photo_of_a_face(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    child = create_child(client, staff, "P", "Pia")
    sent = photos.person(4, 0)
    face_id = enroll(client, staff, child, sent)["photos"][0]["enrolled_face_id"]
    # a whole photo may show others: staff only
    assert client.get(f"/faces/{face_id}/photo", headers=auth("viewer")).status_code == 403
    assert client.get(f"/faces/{face_id}/photo", headers=auth(key="enroll")).status_code == 403
    response = client.get(f"/faces/{face_id}/photo", headers=staff)
    assert response.status_code == 200 and response.content == sent
    assert response.headers["content-type"] == "image/jpeg"
    assert "no-store" in response.headers["cache-control"]
    assert client.get(f"/faces/{face_id}/photo").status_code == 401
    assert client.get("/faces/999999/photo", headers=staff).status_code == 404


def test_review_item_says_where_it_came_from_and_recognize_says_when_not_queued(
    client: TestClient, auth, photos: Photos  # noqa: ANN001
) -> None:
    staff = auth("staff")
    eileen = create_child(client, staff, "E", "Eileen")
    enroll(client, staff, eileen, photos.person(7, 0))
    probe = photos.person(6, 0)  # Tom: not enrolled, close enough to Eileen for review
    (face,) = recognize(client, auth(key="recognize"), probe)["faces"]
    assert face["decision"] == "review" and face["review_queued"] is True
    assert face["review_not_queued_reason"] is None
    item = client.get(f"/review/{face['review_id']}", headers=staff).json()
    assert item["source"]["kind"] == "api_key" and item["source"]["actor"] == "api_key:test-recognize"
    # the box is in the photo's pixels: the page draws it on the original
    assert (item["image_width"], item["image_height"]) == Image.open(io.BytesIO(probe)).size
    assert client.get(f"/faces/{item['face']['id']}/photo", headers=staff).content == probe
    listed = client.get("/review/queue", headers=staff).json()["items"][0]
    assert listed["source"] == item["source"]
    # not asked to queue
    (unqueued,) = recognize(client, staff, photos.person(6, 1), queue_review="false")["faces"]
    assert unqueued["decision"] == "review" and unqueued["review_queued"] is False
    assert unqueued["review_not_queued_reason"] == "not_requested" and unqueued["review_id"] is None
    # decided before: the same photo again is not queued a second time, and the answer says so
    body = {"action": "dismiss"}
    assert client.post(f"/review/{face['review_id']}/resolve", json=body, headers=staff).status_code == 200
    (again,) = recognize(client, staff, probe)["faces"]
    assert again["decision"] == "review" and again["review_queued"] is False
    assert again["review_not_queued_reason"] == "already_decided"
    # a match has no queue fields
    (match,) = recognize(client, staff, photos.person(7, 1))["faces"]
    assert match["decision"] == "match" and match["review_queued"] is None


def test_dismissed_pair_never_comes_back_and_is_audited(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    first = create_child(client, staff, "T-1", "Twin one")
    second = create_child(client, staff, "T-2", "Twin two")
    enroll(client, staff, first, photos.person(7, 0))
    enroll(client, staff, second, photos.person(7, 1))

    def pairs() -> list[set[int]]:
        report = client.get("/review/duplicates", params={"threshold": 0.9}, headers=staff).json()
        return [{p["a"]["child_id"], p["b"]["child_id"]} for p in report["pairs"]]

    assert pairs() == [{first, second}]
    body = {"child_a_id": second, "child_b_id": first}
    assert client.post("/review/duplicates/dismiss", json=body, headers=auth("viewer")).status_code == 403
    dismissed = client.post("/review/duplicates/dismiss", json=body, headers=staff)
    assert dismissed.status_code == 201, dismissed.text
    stored = dismissed.json()
    assert stored["child_a_id"] == min(first, second) and stored["dismissed_by"] == "user:staff"
    assert pairs() == []
    # more photos do not bring the pair back
    enroll(client, staff, second, photos.person(7, 2))
    assert pairs() == []
    for child_id in (first, second):
        history = client.get(f"/children/{child_id}/history", headers=staff).json()["items"]
        assert "duplicates.dismissed" in [e["action"] for e in history]
    again = client.post("/review/duplicates/dismiss", json=body, headers=staff)
    assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
    same = {"child_a_id": first, "child_b_id": first}
    assert client.post("/review/duplicates/dismiss", json=same, headers=staff).status_code == 400
    missing = client.post("/review/duplicates/dismiss", json={"child_a_id": first, "child_b_id": 999_999},
                          headers=staff)
    assert missing.status_code == 404


def test_a_pair_made_by_one_face_proposes_moving_it(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    eileen = create_child(client, staff, "E", "Eileen")
    tom = create_child(client, staff, "T", "Tom")
    enroll(client, staff, eileen, photos.person(7, 0), photos.person(7, 1))
    enroll(client, staff, tom, photos.person(6, 0), photos.person(6, 1))
    # a photo of Eileen enrolled under Tom by mistake (staff overrode the consistency warning)
    result = enroll(client, staff, tom, photos.person(7, 2), confirm="true")
    wrong = result["photos"][0]["enrolled_face_id"]
    assert wrong is not None, result
    report = client.get("/review/duplicates", params={"threshold": 0.9}, headers=staff).json()
    (pair,) = report["pairs"]
    assert pair["suspect_face_id"] == wrong and pair["suspect_child_id"] == tom
    moved = client.post(f"/faces/{wrong}/reassign", json={"child_id": eileen}, headers=staff)
    assert moved.status_code == 200, moved.text
    assert client.get("/review/duplicates", params={"threshold": 0.9}, headers=staff).json()["pairs"] == []
    # a child enrolled twice (every face alike) names no suspect: that is a merge
    again = create_child(client, staff, "E-2", "Eileen again")
    enroll(client, staff, again, photos.person(7, 3), photos.person(7, 4))
    report = client.get("/review/duplicates", params={"threshold": 0.9}, headers=staff).json()
    assert [p["suspect_face_id"] for p in report["pairs"]] == [None]
