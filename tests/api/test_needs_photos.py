"""GET /children/needs-new-photos, and each face's photo date and retirement in the face answers.

Children are enrolled over HTTP with real photos that carry EXIF dates (the
test writes DateTimeOriginal with Pillow), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient
from PIL import Image as PILImage
from sqlalchemy import update

from childface.db.models import Face

from .support import Photos, enroll


def dated(photo: bytes, stamp: str) -> bytes:
    exif = PILImage.Exif()
    exif.get_ifd(0x8769)[36867] = stamp
    out = io.BytesIO()
    PILImage.open(io.BytesIO(photo)).save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


def child(client: TestClient, headers: dict, external_id: str, group: str | None, *photos: bytes) -> int:
    body = {"external_id": external_id, "name": f"Child {external_id}", "group": group}
    created = client.post("/children", json=body, headers=headers)
    assert created.status_code == 201, created.text
    child_id = created.json()["id"]
    for photo in photos:  # one request each: each must be enrolled whatever the others look like
        result = enroll(client, headers, child_id, photo, confirm="true")
        assert result["enrolled"] == 1, result
    return child_id


def test_needs_new_photos_lists_exactly_the_stale_children_per_group(
    client: TestClient, auth, photos: Photos, runtime  # noqa: ANN001
) -> None:
    staff = auth("staff")
    old, older = "2024:01:10 09:00:00", "2023:06:01 09:00:00"
    recent = (datetime.now(UTC) - timedelta(days=30)).strftime("%Y:%m:%d %H:%M:%S")
    ann = child(client, staff, "ANN", "Bears", dated(photos.person(0, 0), old))
    child(client, staff, "BEN", "Bears", photos.person(1, 0))  # no EXIF: dated when uploaded, today
    cid = child(client, staff, "CID", "Bears")  # no photo at all
    dan = child(client, staff, "DAN", "Owls", dated(photos.person(2, 0), older))
    # an old photo and a recent one: the newest decides
    child(client, staff, "FAY", "Owls", dated(photos.person(3, 0), older), dated(photos.person(3, 1), recent))
    # a recent photo that was retired, so only the old one is searched: stale
    gus = child(client, staff, "GUS", None, dated(photos.person(4, 0), old),
                dated(photos.person(4, 1), recent))
    eve = child(client, staff, "EVE", "Owls", dated(photos.person(5, 0), older))
    assert client.post(f"/children/{eve}/archive", headers=staff).status_code == 200  # archived: not listed
    faces = client.get(f"/children/{gus}/faces", headers=staff).json()
    newest = max(faces, key=lambda f: f["taken_at"])["id"]
    with runtime.db.transaction() as session:
        session.execute(update(Face).where(Face.id == newest).values(retired_at=datetime.now(UTC)))

    response = client.get("/children/needs-new-photos", headers=auth("viewer"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stale_template_days"] == 183
    # by group (no group last), the oldest photo first within a group
    assert [(c["external_id"], c["group"]) for c in body["stale"]] == [
        ("ANN", "Bears"), ("DAN", "Owls"), ("GUS", None)
    ]
    assert [c["external_id"] for c in body["no_photos"]] == ["CID"]
    first = body["stale"][0]
    assert first["child_id"] == ann and first["newest_taken_at"].startswith("2024-01-10T09:00:00")
    assert first["newest_taken_at_source"] == "exif" and first["n_templates"] == 1
    as_of = datetime.fromisoformat(body["as_of"])
    assert first["age_days"] == (as_of - datetime(2024, 1, 10, 9, 0, tzinfo=UTC)).days
    assert body["stale"][2]["n_templates"] == 1  # the retired photo is not counted
    assert body["no_photos"][0]["child_id"] == cid and body["no_photos"][0]["age_days"] is None

    owls = client.get("/children/needs-new-photos", params={"group": "Owls"}, headers=staff).json()
    assert [c["child_id"] for c in owls["stale"]] == [dan] and owls["no_photos"] == []
    shorter = runtime.settings.model_copy(update={"stale_template_days": 2000})
    runtime.settings = shorter  # nothing is that old
    assert client.get("/children/needs-new-photos", headers=staff).json()["stale"] == []
    assert client.get("/children/needs-new-photos").status_code == 401


def test_faces_say_when_their_photo_was_taken_and_whether_retired(
    client: TestClient, auth, photos: Photos, runtime  # noqa: ANN001
) -> None:
    staff = auth("staff")
    ann = child(client, staff, "ANN", "Bears", dated(photos.person(0, 0), "2024:01:10 09:00:00"),
                photos.person(0, 1))
    first, second = client.get(f"/children/{ann}/faces", headers=staff).json()
    assert (first["taken_at"][:19], first["taken_at_source"]) == ("2024-01-10T09:00:00", "exif")
    assert second["taken_at_source"] == "upload" and second["taken_at"] is not None
    assert not first["retired"] and first["retired_at"] is None
    with runtime.db.transaction() as session:
        session.execute(update(Face).where(Face.id == first["id"]).values(retired_at=datetime.now(UTC)))
    one = client.get(f"/faces/{first['id']}", headers=staff).json()
    assert one["retired"] and one["retired_at"] is not None and one["taken_at_source"] == "exif"
    other = client.post("/children", json={"external_id": "BEN", "name": "Ben"}, headers=staff).json()
    moved = client.post(f"/faces/{second['id']}/reassign", json={"child_id": other["id"]}, headers=staff)
    assert moved.json()["taken_at"] == second["taken_at"]
