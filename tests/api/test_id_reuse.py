"""No id comes back: after erasing the newest child and its faces, new rows get new ids (both back ends).

SQLite without AUTOINCREMENT hands out max(id) + 1, so the next child took the
erased child's id (and its history and tombstone), and a tombstone's `face_ids`
pointed at a living child's face.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from .support import Photos, create_child, enroll


def test_erased_ids_are_never_given_again(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff, admin = auth("staff"), auth("admin")
    keep = create_child(client, staff, "KEEP-1")
    enroll(client, staff, keep, photos.person(0, 0))
    erased = create_child(client, staff, "GONE-1")
    erased_faces = [p["enrolled_face_id"] for p in enroll(client, staff, erased, photos.person(7, 0),
                                                         photos.person(7, 1))["photos"]]
    assert erased > keep and all(erased_faces)
    response = client.post(f"/children/{erased}/erase", json={"confirm": "ERASE"}, headers=admin)
    assert response.status_code == 200, response.text

    newcomer = create_child(client, staff, "NEW-1")
    new_face = enroll(client, staff, newcomer, photos.person(7, 2))["photos"][0]["enrolled_face_id"]
    assert newcomer > erased
    assert new_face > max(erased_faces)
    # the erased child's id stays unknown; its tombstone still names only its own faces
    assert client.get(f"/children/{erased}", headers=staff).status_code == 404
