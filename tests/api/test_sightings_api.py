"""The video routes: cameras, frames on demand, sightings with crops, attendance (real models, both DBs)."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from childface.services import cameras
from childface.services.runtime import Runtime
from childface.services.sightings import record_track
from services.tracks import T0, track

from .support import Photos, enroll

DAY = T0.date().isoformat()


def _child(client: TestClient, headers: dict[str, str], external_id: str, name: str,
           group: str | None) -> int:
    body = {"external_id": external_id, "name": name, **({"group": group} if group else {})}
    response = client.post("/children", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_video_routes_need_credentials_and_the_right_permission(client: TestClient, auth,  # noqa: ANN001
                                                               runtime: Runtime) -> None:
    cameras.update_camera_status(runtime.db, "front-door", uri_kind="webcam", state="running", fps=20.0,
                                   faces_per_s=1.0, error=None)
    for path in ("/cameras", "/sightings", "/attendance", "/sightings/1/crop", "/cameras/front-door/frame"):
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.json()["error"]["code"] == "unauthorized"
    assert client.post("/cameras/front-door/frame-request").status_code == 401
    viewer = auth("viewer")
    assert client.get("/cameras", headers=viewer).status_code == 200
    assert client.get("/attendance", headers=viewer).status_code == 200
    # a frame shows the whole scene (other children, bystanders): staff only, like an original photo
    assert client.post("/cameras/front-door/frame-request", headers=viewer).status_code == 403
    assert client.get("/cameras/front-door/frame", headers=viewer).status_code == 403
    assert client.get("/sightings?colour=red", headers=viewer).status_code == 422
    assert client.get("/sightings?date=26-11-2026", headers=viewer).status_code == 422
    assert client.get("/sightings?decision=maybe", headers=viewer).status_code == 422


def test_cameras_and_a_frame_on_demand(client: TestClient, auth, runtime: Runtime) -> None:  # noqa: ANN001
    staff = auth("staff")
    beat = {"uri_kind": "stream", "fps": 24.0, "faces_per_s": 2.5}
    cameras.update_camera_status(runtime.db, "front-door", state="running", error=None, **beat)
    cameras.update_camera_status(runtime.db, "garden", state="reconnecting", error="stream ended", **beat)
    listed = client.get("/cameras", headers=staff).json()
    assert [(c["name"], c["state"], c["last_error"]) for c in listed] == [
        ("front-door", "running", None), ("garden", "reconnecting", "stream ended")]
    assert listed[0]["fps"] == 24.0 and listed[0]["recent_events"] == []

    missing = client.get("/cameras/front-door/frame", headers=staff)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_frame"
    requested = client.post("/cameras/front-door/frame-request", headers=staff)
    assert requested.status_code == 202 and requested.json()["requested_at"]
    waiting = client.get("/cameras/front-door/frame", headers=staff)
    assert waiting.status_code == 404 and waiting.json()["error"]["code"] == "frame_not_ready"
    # the watcher's next heartbeat sees the request and hands over its annotated frame
    assert cameras.update_camera_status(runtime.db, "front-door", state="running", error=None, **beat)
    cameras.store_frame(runtime.db, "front-door", b"\xff\xd8\xff\xe0annotated")
    frame = client.get("/cameras/front-door/frame", headers=staff)
    assert frame.status_code == 200 and frame.content == b"\xff\xd8\xff\xe0annotated"
    assert frame.headers["content-type"] == "image/jpeg" and "no-store" in frame.headers["cache-control"]
    assert client.get("/cameras/front-door/frame", headers=staff).status_code == 404  # served once
    assert client.post("/cameras/nowhere/frame-request", headers=staff).status_code == 404


def test_sightings_attendance_and_crops(client: TestClient, auth, runtime: Runtime,  # noqa: ANN001
                                       photos: Photos) -> None:
    staff, viewer = auth("staff"), auth("viewer")
    ann = _child(client, staff, "ANN-1", "Ann", "Bears")
    ben = _child(client, staff, "BEN-1", "Ben", "Bears")
    cal = _child(client, staff, "CAL-1", "Cal", None)
    dee = _child(client, staff, "DEE-1", "Dee", "Owls")
    for child, person in ((ann, 0), (ben, 1), (cal, 2), (dee, 3)):
        enroll(client, staff, child, photos.person(person, 0))
    cameras.update_camera_status(runtime.db, "front-door", uri_kind="stream", state="running", fps=20.0,
                                   faces_per_s=1.0, error=None)
    # Ann at the door, then again in the hall; Cal at the door later
    door = track(runtime, photos.person(0, 5), track_id="a-1")
    assert record_track(runtime, door) == ["arrival", "sighting"]
    record_track(runtime, track(runtime, photos.person(0, 6), track_id="h-1", source="hall",
                                at=T0 + timedelta(hours=1)))
    record_track(runtime, track(runtime, photos.person(2, 5), track_id="a-2", at=T0 + timedelta(minutes=5)))

    page = client.get(f"/sightings?date={DAY}", headers=viewer).json()
    assert [(s["track_id"], s["child_id"], s["child_name"]) for s in page["items"]] == [
        ("a-2", cal, "Cal"), ("h-1", ann, "Ann"), ("a-1", ann, "Ann")]
    assert all(s["decision"] == "match" and s["has_crop"] and s["final"] for s in page["items"])
    assert page["next_before_id"] is None
    first = client.get("/sightings?limit=2", headers=viewer).json()
    assert len(first["items"]) == 2 and first["next_before_id"] == first["items"][-1]["id"]
    rest = client.get(f"/sightings?limit=2&before_id={first['next_before_id']}", headers=viewer).json()
    assert [s["track_id"] for s in rest["items"]] == ["a-1"] and rest["next_before_id"] is None
    by_child = client.get(f"/sightings?child_id={ann}&source=hall", headers=viewer).json()["items"]
    assert [s["track_id"] for s in by_child] == ["h-1"]
    next_day = (T0.date() + timedelta(days=1)).isoformat()
    assert client.get(f"/sightings?date={next_day}", headers=viewer).json()["items"] == []

    crop = client.get(f"/sightings/{page['items'][0]['id']}/crop", headers=viewer)
    assert crop.status_code == 200 and crop.content[:3] == b"\xff\xd8\xff"
    assert client.get("/sightings/999999/crop", headers=viewer).status_code == 404

    attendance = client.get(f"/attendance?date={DAY}", headers=viewer).json()
    assert attendance["date"] == DAY and attendance["timezone"] == "UTC"
    groups = {g["group"]: g for g in attendance["groups"]}
    assert list(groups) == ["Bears", "Owls", "(no group)"]
    assert [(a["child_id"], a["source"]) for a in groups["Bears"]["arrived"]] == [(ann, "front-door")]
    assert groups["Bears"]["arrived"][0]["arrived_at"].startswith("2026-11-26T07:30:00")
    assert [a["name"] for a in groups["Bears"]["absent"]] == ["Ben"]
    assert groups["Owls"]["arrived"] == []
    assert [a["external_id"] for a in groups["Owls"]["absent"]] == ["DEE-1"]
    assert [a["name"] for a in groups["(no group)"]["arrived"]] == ["Cal"]
    owls = client.get(f"/attendance?date={DAY}&group=Owls", headers=viewer).json()["groups"]
    assert [g["group"] for g in owls] == ["Owls"]
    # an archived child is not expected: neither arrived nor absent
    assert client.post(f"/children/{ben}/archive", headers=staff).status_code == 200
    bears = client.get(f"/attendance?date={DAY}&group=Bears", headers=viewer).json()["groups"][0]
    assert bears["absent"] == []

    events = client.get("/cameras", headers=viewer).json()[0]["recent_events"]
    # each track of the door camera recorded its child's arrival (Ann's second track was in the hall)
    assert [(e["kind"], e["child_name"], e["decision"]) for e in events] == [
        ("arrival", "Cal", "match"), ("arrival", "Ann", "match")]
