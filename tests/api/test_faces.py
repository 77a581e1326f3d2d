"""Faces: remove, reassign, reject — and the index follows every change."""

from __future__ import annotations

from fastapi.testclient import TestClient

from childface.services.removed_faces import purge_expired_removals

from .support import Photos, create_child, enroll, recognize


def test_reassign_moves_recognition(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff = auth("staff")
    eileen, tom = create_child(client, staff, "E"), create_child(client, staff, "T")
    face_id = enroll(client, staff, tom, photos.person(7, 0))["photos"][0]["enrolled_face_id"]  # wrong child
    assert recognize(client, staff, photos.person(7, 4))["faces"][0]["candidates"][0]["child_id"] == tom
    moved = client.post(f"/faces/{face_id}/reassign", json={"child_id": eileen}, headers=staff)
    assert moved.status_code == 200 and moved.json()["child_id"] == eileen
    assert recognize(client, staff, photos.person(7, 4))["faces"][0]["candidates"][0]["child_id"] == eileen
    assert (
        client.post(f"/faces/{face_id}/reassign", json={"child_id": eileen}, headers=staff).status_code == 409
    )
    assert (
        client.post(f"/faces/{face_id}/reassign", json={"child_id": 99999}, headers=staff).status_code == 404
    )
    (event,) = client.get("/audit", params={"action": "face.reassigned"}, headers=staff).json()["items"]
    assert event["before"]["child_id"] == tom and event["after"]["child_id"] == eileen
    assert event["face_ids"] == [face_id]
    # both children's histories show the move
    for child in (tom, eileen):
        history = client.get(f"/children/{child}/history", headers=staff).json()["items"]
        assert event["seq"] in [e["seq"] for e in history], child
    assert runtime.gallery.check().clean


def test_reject_and_remove(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff = auth("staff")
    child = create_child(client, staff, "E")
    result = enroll(client, staff, child, photos.person(7, 0), photos.person(7, 1))
    first, second = (p["enrolled_face_id"] for p in result["photos"])
    rejected = client.post(f"/faces/{first}/reject", headers=staff).json()
    assert rejected["review_state"] == "rejected"
    assert runtime.gallery.count == 1 and not runtime.gallery.check().missing
    assert client.get(f"/children/{child}", headers=staff).json()["n_faces"] == 1
    sha = result["photos"][1]["sha256"]
    stored = list((runtime.settings.media_dir / sha[:2] / sha[2:4]).glob(f"{sha}.*"))
    assert stored
    assert client.delete(f"/faces/{second}", headers=auth("viewer")).status_code == 403
    assert client.delete(f"/faces/{second}", headers=staff).status_code == 200
    assert client.get(f"/faces/{second}", headers=staff).status_code == 404
    assert stored[0].exists()  # kept with the removed face, so the removal can be undone
    # removed faces kept 0 days are purged at the next housekeeping round: the photo had no other face
    runtime.settings = runtime.settings.model_copy(update={"removed_faces_keep_days": 0})
    assert purge_expired_removals(db=runtime.db, media=runtime.media, settings=runtime.settings) == [second]
    assert not stored[0].exists()
    assert runtime.gallery.count == 0 and runtime.gallery.check().clean
    assert recognize(client, staff, photos.person(7, 3))["faces"][0]["decision"] == "unknown"
