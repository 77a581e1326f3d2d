"""Erasure: photos, faces, embeddings, files and index entries go; the audit keeps a tombstone."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from childface.db.models import Embedding, Face, Image

from .support import Photos, box_text, create_child, enroll, recognize


def _files(runtime) -> set[str]:  # noqa: ANN001
    return {p.name for p in runtime.settings.media_dir.rglob("*") if p.is_file()}


def test_erase_child(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff, admin = auth("staff"), auth("admin")
    eileen = create_child(client, staff, "E-42", "Eileen Collins")
    tom = create_child(client, staff, "T-1", "Tom")
    own = enroll(client, staff, eileen, photos.person(7, 0), photos.person(7, 1))
    group_faces = client.post(
        "/detect", files={"file": ("t1.jpg", photos.group, "image/jpeg")}, headers=staff
    ).json()["faces"]
    shared_e = enroll(client, staff, eileen, photos.group, hint_box=box_text(group_faces[0]["box"]))
    shared_t = enroll(client, staff, tom, photos.group, hint_box=box_text(group_faces[1]["box"]))
    recognize(client, staff, photos.person(3, 0))  # leaves a review item naming Eileen as a candidate
    eileen_faces = [p["enrolled_face_id"] for p in own["photos"] + shared_e["photos"]]
    own_files = {f"{p['sha256']}.jpg" for p in own["photos"]}
    assert own_files <= _files(runtime)

    assert (
        client.post(f"/children/{eileen}/erase", json={"confirm": "ERASE"}, headers=staff).status_code == 403
    )
    unconfirmed = client.post(f"/children/{eileen}/erase", json={"confirm": "yes"}, headers=admin)
    assert unconfirmed.status_code == 400 and unconfirmed.json()["error"]["code"] == "confirmation_required"
    erased = client.post(f"/children/{eileen}/erase", json={"confirm": "ERASE"}, headers=admin)
    assert erased.status_code == 200, erased.text
    assert erased.json() == {
        "child_id": eileen,
        "external_id": "E-42",
        "faces_deleted": 3,
        "images_deleted": 2,
        "files_deleted": 2,
    }

    # files of her own photos are gone; the group photo stays for Tom's face
    assert not own_files & _files(runtime)
    assert f"{shared_t['photos'][0]['sha256']}.jpg" in _files(runtime)
    with runtime.db.session() as session:
        assert session.scalar(select(func.count()).select_from(Face).where(Face.id.in_(eileen_faces))) == 0
        assert (
            session.scalar(
                select(func.count()).select_from(Embedding).where(Embedding.face_id.in_(eileen_faces))
            )
            == 0
        )
        assert session.scalar(select(func.count()).select_from(Image)) == 2  # group photo + review probe
    assert not any(runtime.gallery._children.index.contains(f) for f in eileen_faces)  # noqa: SLF001
    assert runtime.gallery.check().clean
    assert client.get(f"/children/{eileen}", headers=staff).status_code == 404
    (face,) = recognize(client, staff, photos.person(7, 5))["faces"]
    assert eileen not in [c["child_id"] for c in face["candidates"]]
    assert (
        client.post(f"/children/{eileen}/erase", json={"confirm": "ERASE"}, headers=admin).status_code == 404
    )

    # the tombstone: who and when, the external id and counts; no name, no photo, no geometry
    history = client.get(f"/children/{eileen}/history", headers=staff).json()["items"]
    tombstone = history[0]
    assert tombstone["action"] == "child.erased" and tombstone["actor"] == "user:admin"
    assert tombstone["before"] == {"external_id": "E-42"}
    assert tombstone["after"] == {"erased": True, "faces_deleted": 3, "images_deleted": 2}
    text = json.dumps(tombstone)
    assert "Eileen" not in text and "sha" not in text and "box" not in text and "landmark" not in text
