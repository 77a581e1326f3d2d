"""`POST /audit/{seq}/undo` over HTTP: who may undo, what it answers, the refusals (409 with the reason and
the change it names), the `undoable` hints of the history, and every process's index following an undo."""

from __future__ import annotations

from fastapi.testclient import TestClient

from childface.services.runtime import Runtime

from .support import Photos, create_child, enroll, recognize

ERASE = {"confirm": "ERASE"}


def _history(client: TestClient, headers: dict[str, str], child_id: int) -> list[dict]:
    return client.get(f"/children/{child_id}/history", headers=headers).json()["items"]


def _matched(client: TestClient, headers: dict[str, str], photo: bytes) -> int | None:
    (face,) = recognize(client, headers, photo, queue_review="false")["faces"]
    return face["candidates"][0]["child_id"] if face["decision"] == "match" else None


def _best_face(client: TestClient, headers: dict[str, str], photo: bytes) -> int:
    """The enrolled face that matches the photo best."""
    (face,) = recognize(client, headers, photo, queue_review="false")["faces"]
    return face["candidates"][0]["face_id"]


def test_remove_and_restore_a_face_over_http(
    client: TestClient, auth, photos: Photos, runtime: Runtime, settings  # noqa: ANN001
) -> None:
    staff, viewer = auth("staff"), auth("viewer")
    ann = create_child(client, staff, "ANN", "Ann")
    enrolled = enroll(client, staff, ann, photos.person(0, 0), photos.person(0, 1))
    face, kept = (p["enrolled_face_id"] for p in enrolled["photos"])
    assert _best_face(client, staff, photos.person(0, 0)) == face

    # removal: the face leaves recognition at once; its history row offers the undo with a date
    assert client.delete(f"/faces/{face}", headers=staff).status_code == 200
    assert _best_face(client, staff, photos.person(0, 0)) == kept
    assert client.get(f"/faces/{face}/thumbnail", headers=staff).status_code == 404
    removal = next(e for e in _history(client, staff, ann) if e["target_id"] == str(face))
    assert removal["action"] == "face.removed" and removal["undoable"] is True
    assert removal["after"]["kept_until"] and removal["after"]["image_deleted"] is False

    # a second process on the same database, started now, follows the undo from the audit feed
    other = Runtime(settings.model_copy(update={"index_dir": settings.index_dir.parent / "other-index"}),
                    pipeline=runtime.pipeline)
    other.start(autosave=False)
    try:
        assert list(other.current_gallery()._children.owners([face, kept])) == [-1, ann]  # noqa: SLF001

        assert client.post(f"/audit/{removal['seq']}/undo", headers=viewer).status_code == 403
        assert client.post("/audit/999999/undo", headers=staff).status_code == 404
        response = client.post(f"/audit/{removal['seq']}/undo", headers=staff)
        assert response.status_code == 200, response.text
        assert list(other.current_gallery()._children.owners([face, kept])) == [ann, ann]  # noqa: SLF001
    finally:
        other.close()
    body = response.json()
    assert body["undone_seq"] == removal["seq"] and body["action"] == "face.removed"
    assert body["redo"] is False and body["face_ids"] == [face] and body["child_ids"] == [ann]
    assert body["summary"] == f"face {face} restored"
    assert client.get(f"/faces/{face}/thumbnail", headers=staff).status_code == 200
    assert _best_face(client, staff, photos.person(0, 0)) == face

    history = {e["seq"]: e for e in _history(client, staff, ann)}
    assert history[body["seq"]]["action"] == "audit.undone" and history[body["seq"]]["undoable"] is True
    assert history[removal["seq"]]["undoable"] is False
    again = client.post(f"/audit/{removal['seq']}/undo", headers=staff)
    assert again.status_code == 409 and again.json()["error"]["code"] == "already_undone"
    assert again.json()["error"]["details"][0]["seq"] == body["seq"]

    # not undoable: creating a child
    created = next(e for e in _history(client, staff, ann) if e["action"] == "child.created")
    assert created["undoable"] is False
    refused = client.post(f"/audit/{created['seq']}/undo", headers=staff)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_undoable"


def test_refusals_name_the_later_change_and_erasure_is_irreversible(
    client: TestClient, auth, photos: Photos, runtime: Runtime  # noqa: ANN001
) -> None:
    staff, admin = auth("staff"), auth("admin")
    ann, ben, cat = (create_child(client, staff, cid, cid.title()) for cid in ("ANN", "BEN", "CAT"))
    enroll(client, staff, ann, photos.person(0, 0))
    moved = enroll(client, staff, ben, photos.person(1, 0))["photos"][0]["enrolled_face_id"]
    enroll(client, staff, cat, photos.person(2, 0))
    assert client.post(f"/children/{ann}/merge", json={"source_id": ben}, headers=staff).status_code == 200
    merge = _history(client, staff, ben)[0]
    assert merge["action"] == "child.merged" and merge["undoable"] is True
    assert client.post(f"/faces/{moved}/reassign", json={"child_id": cat}, headers=admin).status_code == 200
    reassign = _history(client, staff, cat)[0]

    assert next(e for e in _history(client, staff, ben) if e["seq"] == merge["seq"])["undoable"] is False
    refused = client.post(f"/audit/{merge['seq']}/undo", headers=staff)
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert error["code"] == "changed_since"
    assert error["details"] == [{"seq": reassign["seq"], "action": "face.reassigned",
                                 "at": error["details"][0]["at"], "actor": "user:admin"}]
    assert f"change {reassign['seq']} (face.reassigned" in error["message"]

    # undo the later change first; then the merge can be undone: both children as before
    assert client.post(f"/audit/{reassign['seq']}/undo", headers=staff).status_code == 200
    unmerged = client.post(f"/audit/{merge['seq']}/undo", headers=staff)
    assert unmerged.status_code == 200, unmerged.text
    assert [f["id"] for f in client.get(f"/children/{ben}/faces", headers=staff).json()] == [moved]
    assert client.get(f"/children/{ben}", headers=staff).json()["status"] == "active"
    assert _matched(client, staff, photos.person(1, 3)) == ben

    # erasure: irreversible, said so; and the earlier changes of the erased child with it
    assert client.post(f"/children/{ben}/erase", json=ERASE, headers=admin).status_code == 200
    tombstone = client.get("/audit", params={"action": "child.erased"}, headers=staff).json()["items"][0]
    assert tombstone["undoable"] is False
    for seq in (tombstone["seq"], unmerged.json()["seq"]):
        answer = client.post(f"/audit/{seq}/undo", headers=admin)
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "irreversible"
        assert "irreversible by design" in answer.json()["error"]["message"]
