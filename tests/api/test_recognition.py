"""POST /recognize, /verify, /detect with real photos: the contract other systems rely on."""

from __future__ import annotations

import cv2
import numpy as np
from fastapi.testclient import TestClient

from .support import Photos, create_child, enroll, jpeg, on_canvas, recognize, variation


def _probe(photos: Photos, person: int, n: int) -> bytes:
    """A 640x480 photo with a new variation of one person."""
    face = variation(photos.people[person], n)
    scale = min(1.0, 300 / max(face.shape[:2]))
    face = cv2.resize(face, (int(face.shape[1] * scale), int(face.shape[0] * scale)))
    return jpeg(on_canvas(face))


def test_recognize_contract(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    eileen = create_child(client, staff, "E-7", "Eileen")
    tom = create_child(client, staff, "T-1", "Tom")
    enroll(client, staff, eileen, photos.person(7, 0), photos.person(7, 1))
    enroll(client, staff, tom, photos.person(6, 0))
    key = auth(key="recognize")
    body = recognize(client, key, _probe(photos, 7, 5))
    assert body["width"] == 640 and body["height"] == 480 and body["model_id"]
    (face,) = body["faces"]
    assert face["decision"] == "match" and face["review_id"] is None
    assert len(face["box"]) == 4 and np.asarray(face["landmarks"]).shape == (5, 2)
    assert set(face["quality"]) == {"score", "passed", "reasons"}
    best = face["candidates"][0]
    assert best == {**best, "child_id": eileen, "external_id": "E-7", "name": "Eileen"}
    assert best["score"] > 0.95
    assert [c["child_id"] for c in face["candidates"]] == [eileen, tom]
    assert face["candidates"][0]["score"] >= face["candidates"][1]["score"]
    tom_probe = recognize(client, key, _probe(photos, 6, 3))["faces"][0]
    assert tom_probe["decision"] == "match" and tom_probe["candidates"][0]["child_id"] == tom
    assert recognize(client, key, photos.masks[1])["faces"] == []
    assert (
        client.post(
            "/recognize", files={"file": ("p.jpg", photos.hanks, "image/jpeg")}, headers=auth(key="enroll")
        ).status_code
        == 403
    )


def test_recognize_group_photo_queues_undecided_faces(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    enroll(client, staff, create_child(client, staff, "E"), photos.person(7, 0))
    body = recognize(client, staff, photos.group)
    assert len(body["faces"]) == 6
    decisions = [f["decision"] for f in body["faces"]]
    assert "match" not in decisions  # none of these six people is enrolled
    queued = [f["review_id"] for f in body["faces"] if f["decision"] == "review"]
    assert all(queued) and len(set(queued)) == len(queued)
    assert all(f["review_id"] is None for f in body["faces"] if f["decision"] == "unknown")
    queue = client.get("/review/queue", headers=staff).json()
    assert queue["total"] == len(queued)
    # the same photo again reuses the open items instead of queueing the faces twice
    again = recognize(client, staff, photos.group)
    assert [f["review_id"] for f in again["faces"] if f["decision"] == "review"] == queued
    assert client.get("/review/queue", headers=staff).json()["total"] == len(queued)
    without = recognize(client, staff, jpeg(variation(photos.group_rgb, 1)), queue_review="false")
    assert all(f["review_id"] is None for f in without["faces"])


def test_empty_gallery_says_unknown(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    (face,) = recognize(client, auth("staff"), photos.astronaut)["faces"]
    assert face["decision"] == "unknown" and face["candidates"] == []


def test_verify_against_child_and_photo(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    eileen, tom = create_child(client, staff, "E"), create_child(client, staff, "T")
    enroll(client, staff, eileen, photos.person(7, 0))
    enroll(client, staff, tom, photos.person(6, 0))
    probe = ("p.jpg", _probe(photos, 7, 4), "image/jpeg")
    same = client.post("/verify", files={"file": probe}, data={"child_id": eileen}, headers=staff).json()
    assert same["decision"] == "match" and same["score"] > 0.95 and same["child_id"] == eileen
    other = client.post("/verify", files={"file": probe}, data={"child_id": tom}, headers=staff).json()
    assert other["decision"] != "match" and other["score"] < same["score"]
    pair = client.post(
        "/verify", files={"file": probe, "file2": ("q.jpg", photos.person(7, 9), "image/jpeg")}, headers=staff
    ).json()
    assert pair["decision"] == "match" and pair["other_face"] is not None
    nobody = client.post(
        "/verify",
        files={"file": ("m.jpg", photos.masks[0], "image/jpeg")},
        data={"child_id": eileen},
        headers=staff,
    ).json()
    assert nobody["decision"] == "unknown" and nobody["reasons"] == ["no_face"]
    neither = client.post("/verify", files={"file": probe}, headers=staff)
    assert neither.status_code == 400 and neither.json()["error"]["code"] == "invalid_input"
    empty = create_child(client, staff, "N")
    no_templates = client.post(
        "/verify", files={"file": probe}, data={"child_id": empty}, headers=staff
    ).json()
    assert no_templates["reasons"] == ["child_has_no_templates"]


def test_detect_finds_faces_only(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    response = client.post(
        "/detect", files={"file": ("t1.jpg", photos.group, "image/jpeg")}, headers=auth(key="recognize")
    )
    body = response.json()
    assert response.status_code == 200 and len(body["faces"]) == 6
    assert all(f["detector_score"] > 0.9 for f in body["faces"])
    assert client.get("/review/queue", headers=auth("staff")).json()["total"] == 0


def test_a_second_api_process_sees_the_first_ones_changes(
    client: TestClient,
    auth,
    photos: Photos,
    runtime,
    pipeline,  # noqa: ANN001
) -> None:
    """Two API processes on one database: each catches up from the audit feed before it searches."""
    from childface.api.app import create_app
    from childface.services.runtime import Runtime

    replica_runtime = Runtime(
        runtime.settings.model_copy(
            update={"index_dir": runtime.settings.media_dir.parent / "replica-index"}
        ),
        pipeline=pipeline,
    )
    replica_runtime.start(autosave=False)
    try:
        with TestClient(create_app(replica_runtime.settings, replica_runtime)) as replica:
            key = auth(key="recognize")
            assert recognize(replica, key, _probe(photos, 7, 5))["faces"][0]["decision"] == "unknown"
            staff = auth("staff")
            eileen = create_child(client, staff, "E-7", "Eileen")
            enroll(client, staff, eileen, photos.person(7, 0), photos.person(7, 1))
            face = recognize(replica, key, _probe(photos, 7, 5))["faces"][0]
            assert face["decision"] == "match" and face["candidates"][0]["child_id"] == eileen
            verified = replica.post(
                "/verify",
                files={"file": ("p.jpg", _probe(photos, 7, 6), "image/jpeg")},
                data={"child_id": str(eileen)},
                headers=key,
            )
            assert verified.status_code == 200 and verified.json()["decision"] == "match", verified.text
            # the first process erases the child: the replica stops recognising her
            admin = auth("admin")
            erased = client.post(f"/children/{eileen}/erase", json={"confirm": "ERASE"}, headers=admin)
            assert erased.status_code == 200, erased.text
            assert recognize(replica, key, _probe(photos, 7, 5))["faces"][0]["candidates"] == []
    finally:
        replica_runtime.close()
