"""The review queue round trip, and how a confirmed face becomes a template."""

from __future__ import annotations

from fastapi.testclient import TestClient

from .support import Photos, create_child, enroll, recognize


def _queued(client: TestClient, headers: dict[str, str], photo: bytes) -> dict:
    (face,) = recognize(client, headers, photo)["faces"]
    assert face["decision"] == "review", face
    return face


def test_round_trip_new_child(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff = auth("staff")
    eileen = create_child(client, staff, "E", "Eileen")
    enroll(client, staff, eileen, photos.person(7, 0))
    face = _queued(client, auth(key="recognize"), photos.person(6, 0))  # Tom: not enrolled, close enough
    queue = client.get("/review/queue", headers=auth("viewer")).json()
    (item,) = queue["items"]
    assert item["id"] == face["review_id"] and item["status"] == "open"
    assert item["face"]["child_id"] is None and item["face"]["review_state"] == "pending_review"
    assert item["candidates"][0] == {**item["candidates"][0], "child_id": eileen, "name": "Eileen"}
    assert client.get(item["face"]["thumbnail_url"], headers=staff).status_code == 200
    body = {"action": "new_child", "new_child": {"external_id": "T-1", "name": "Tom"}}
    assert client.post(f"/review/{item['id']}/resolve", json=body, headers=auth("viewer")).status_code == 403
    resolved = client.post(f"/review/{item['id']}/resolve", json=body, headers=staff)
    assert resolved.status_code == 200, resolved.text
    result = resolved.json()
    assert (
        result["template_added"]
        and result["child"]["external_id"] == "T-1"
        and result["child"]["n_faces"] == 1
    )
    assert result["review"]["status"] == "resolved" and result["review"]["resolved_by"] == "user:staff"
    assert client.get("/review/queue", headers=staff).json()["total"] == 0
    # the confirmed face is now a template: the next photo of Tom is a match
    (again,) = recognize(client, staff, photos.person(6, 3))["faces"]
    assert again["decision"] == "match" and again["candidates"][0]["child_id"] == result["child"]["id"]
    twice = client.post(f"/review/{item['id']}/resolve", json=body, headers=staff)
    assert twice.status_code == 409
    assert runtime.gallery.check().clean
    events = client.get("/audit", params={"action": "review.*"}, headers=staff).json()["items"]
    assert [e["action"] for e in events] == ["review.resolved", "review.queued"]


def test_assign_confirm_dismiss(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff = auth("staff")
    eileen, tom = create_child(client, staff, "E"), create_child(client, staff, "T")
    enroll(client, staff, eileen, photos.person(7, 0))
    first = _queued(client, staff, photos.person(6, 0))
    assign = {"action": "assign", "child_id": tom, "add_as_template": True}
    assigned = client.post(f"/review/{first['review_id']}/resolve", json=assign, headers=staff).json()
    assert assigned["template_added"] and assigned["child"]["id"] == tom
    assert client.get(f"/children/{tom}/faces", headers=staff).json()[0]["review_state"] == "enrolled"

    # confirm takes the best candidate; without add_as_template the face is kept but not searched
    second = _queued(client, staff, photos.person(3, 0))
    best = second["candidates"][0]["child_id"]
    confirm = {"action": "confirm", "add_as_template": False}
    confirmed = client.post(f"/review/{second['review_id']}/resolve", json=confirm, headers=staff).json()
    assert not confirmed["template_added"] and confirmed["template_refused_reasons"] == ["not_requested"]
    assert confirmed["review"]["face"]["child_id"] == best
    assert confirmed["review"]["face"]["review_state"] == "rejected"

    third = _queued(client, staff, photos.person(4, 0))
    dismissed = client.post(
        f"/review/{third['review_id']}/resolve", json={"action": "dismiss"}, headers=staff
    ).json()
    assert dismissed["child"] is None and dismissed["review"]["face"]["child_id"] is None
    resolved = client.get("/review/queue", params={"status": "resolved"}, headers=staff).json()
    assert {i["resolution"] for i in resolved["items"]} == {"assign", "confirm", "dismiss"}
    assert runtime.gallery.count == 2 and runtime.gallery.check().clean
    missing = client.post("/review/999999/resolve", json={"action": "dismiss"}, headers=staff)
    assert missing.status_code == 404
    bad = client.post(f"/review/{third['review_id']}/resolve", json={"action": "assign"}, headers=staff)
    assert bad.status_code in (400, 409)
