"""POST /children/{id}/images: per-photo outcomes with real photos and real models."""

from __future__ import annotations

import cv2
import numpy as np
from fastapi.testclient import TestClient

from .support import Photos, box_text, create_child, enroll, jpeg, on_canvas


def test_enroll_several_photos_of_one_child(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff = auth("staff")
    child_id = create_child(client, staff, "K-1", "Eileen")
    result = enroll(
        client,
        staff,
        child_id,
        photos.astronaut,
        photos.person(7, 1),
        photos.person(7, 2),
        mask="false",
        arousal="0.25",
        valence="0.5",
    )
    assert result["child_id"] == child_id and result["enrolled"] == 3
    for photo in result["photos"]:
        assert photo["status"] == "enrolled" and photo["reasons"] == [] and len(photo["sha256"]) == 64
        (face,) = photo["faces"]
        assert face["enrolled"] and face["face_id"] == photo["enrolled_face_id"]
        assert face["quality"]["passed"] and 0 < face["quality"]["score"] <= 1
        assert len(face["landmarks"]) == 5 and len(face["box"]) == 4
    faces = client.get(f"/children/{child_id}/faces", headers=auth("viewer")).json()
    assert (
        len(faces) == 3
        and {f["arousal"] for f in faces} == {0.25}
        and {f["valence"] for f in faces} == {0.5}
    )
    assert all(f["mask"] is False and f["review_state"] == "enrolled" for f in faces)
    thumb = client.get(faces[0]["thumbnail_url"], headers=auth("viewer"))
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert cv2.imdecode(np.frombuffer(thumb.content, np.uint8), cv2.IMREAD_COLOR) is not None
    assert client.get(faces[0]["thumbnail_url"]).status_code == 401
    assert client.get(f"/children/{child_id}", headers=staff).json()["n_faces"] == 3
    assert runtime.gallery.count == 3 and runtime.gallery.check().clean
    # the photo files are in the content-addressed store
    for photo in result["photos"]:
        sha = photo["sha256"]
        assert list((runtime.settings.media_dir / sha[:2] / sha[2:4]).glob(f"{sha}.*"))


def test_same_photo_twice_is_no_duplicate(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff = auth("staff")
    ada = create_child(client, staff, "A")
    first = enroll(client, staff, ada, photos.hanks, photos.hanks)
    assert [p["status"] for p in first["photos"]] == ["enrolled", "duplicate"]
    again = enroll(client, staff, ada, photos.hanks)["photos"][0]
    assert again["status"] == "duplicate" and again["reasons"] == ["duplicate_image"]
    assert again["message"] == "this photo is already enrolled for A"  # for staff: no face or child ids
    ben = create_child(client, staff, "B")
    other = enroll(client, staff, ben, photos.hanks)["photos"][0]
    assert other["status"] == "duplicate"
    assert other["message"] == "this photo is already enrolled for another child"
    assert client.get(f"/children/{ada}", headers=staff).json()["n_faces"] == 1
    assert client.get(f"/children/{ben}", headers=staff).json()["n_faces"] == 0
    assert runtime.gallery.count == 1


def test_hint_box_selects_the_face_in_a_group_photo(
    client: TestClient, auth, photos: Photos, runtime
) -> None:  # noqa: ANN001
    staff = auth("staff")
    ada, ben = create_child(client, staff, "A"), create_child(client, staff, "B")
    refused = enroll(client, staff, ada, photos.group)["photos"][0]
    assert refused["status"] == "refused" and refused["reasons"] == ["several_faces_no_hint"]
    assert len(refused["faces"]) == 6 and not any(f["enrolled"] for f in refused["faces"])
    boxes = [f["box"] for f in refused["faces"]]
    first = enroll(client, staff, ada, photos.group, hint_box=box_text(boxes[2]))["photos"][0]
    assert first["status"] == "enrolled"
    assert [f["enrolled"] for f in first["faces"]] == [i == 2 for i in range(6)]
    # a slightly different box still selects the same face
    shifted = [boxes[4][0] + 5, boxes[4][1] - 5, boxes[4][2] + 8, boxes[4][3]]
    second = enroll(client, staff, ben, photos.group, hint_box=box_text(shifted))["photos"][0]
    assert second["status"] == "enrolled" and second["image_id"] == first["image_id"]
    assert second["faces"][4]["enrolled"]
    repeat = enroll(client, staff, ben, photos.group, hint_box=box_text(boxes[4]))["photos"][0]
    assert repeat["status"] == "duplicate"
    nowhere = enroll(client, staff, ben, photos.group, hint_box="0,0,10,10")["photos"][0]
    assert nowhere["reasons"] == ["hint_matches_no_face"]
    bad = client.post(
        f"/children/{ben}/images",
        files=[("files", ("g.jpg", photos.group, "image/jpeg"))],
        data={"hint_box": "1,2,3"},
        headers=staff,
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_input"
    # only the chosen faces were stored: one per child, none of the four others
    assert runtime.gallery.count == 2


def test_refusal_reasons(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff = auth("staff")
    child_id = create_child(client, staff, "K")
    astronaut = photos.astronaut_rgb
    small = on_canvas(cv2.resize(astronaut, (128, 128)), size=(320, 240), at=(100, 60))
    blurred = cv2.GaussianBlur(astronaut, (0, 0), 4)
    tilted = cv2.warpAffine(astronaut, cv2.getRotationMatrix2D((256, 256), 50, 1), (512, 512))
    result = enroll(
        client,
        staff,
        child_id,
        photos.masks[0],
        jpeg(small),
        jpeg(blurred),
        jpeg(tilted),
        b"definitely not a photo",
        b"",
    )
    reasons = [p["reasons"] for p in result["photos"]]
    assert result["enrolled"] == 0 and all(p["status"] == "refused" for p in result["photos"])
    assert reasons[0] == ["no_face"]
    assert "too_small" in reasons[1] and "blurred" in reasons[2] and "tilted" in reasons[3]
    assert reasons[4] == ["invalid_image"] and reasons[5] == ["invalid_image"]
    assert result["photos"][2]["faces"][0]["refused_reasons"] == reasons[2]
    # nothing was written: no face, no photo file, no audit event
    assert runtime.gallery.count == 0
    assert not [p for p in runtime.settings.media_dir.rglob("*") if p.is_file()]
    events = client.get("/audit", params={"action": "face.*"}, headers=auth("admin")).json()
    assert events["total"] == 0


def test_enroll_into_archived_or_missing_child(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    child_id = create_child(client, staff, "K")
    client.post(f"/children/{child_id}/archive", headers=staff)
    files = [("files", ("a.jpg", photos.astronaut, "image/jpeg"))]
    archived = client.post(f"/children/{child_id}/images", files=files, headers=staff)
    assert archived.status_code == 409 and archived.json()["error"]["code"] == "child_not_active"
    missing = client.post("/children/424242/images", files=files, headers=staff)
    assert missing.status_code == 404
    no_files = client.post(f"/children/{child_id}/images", headers=staff)
    assert no_files.status_code == 422
    assert client.post(f"/children/{child_id}/images", files=files, headers=auth("viewer")).status_code == 403
