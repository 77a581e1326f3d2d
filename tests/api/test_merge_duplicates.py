"""A child enrolled twice: the duplicates report finds the pair, merge fixes it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from .support import Photos, create_child, enroll, recognize


def test_duplicates_then_merge(client: TestClient, auth, photos: Photos, runtime) -> None:  # noqa: ANN001
    staff = auth("staff")
    first = create_child(client, staff, "E-1", "Eileen")
    second = create_child(client, staff, "E-2", "Eileen C.")
    tom = create_child(client, staff, "T", "Tom")
    enroll(client, staff, first, photos.person(7, 0), photos.person(7, 1))
    enroll(client, staff, second, photos.person(7, 2))
    enroll(client, staff, tom, photos.person(6, 0))
    report = client.get("/review/duplicates", headers=staff).json()
    assert report["threshold"] == runtime.settings.review_threshold
    pair = report["pairs"][0]
    assert {pair["a"]["child_id"], pair["b"]["child_id"]} == {first, second} and pair["score"] > 0.95
    assert all(
        {p["a"]["child_id"], p["b"]["child_id"]} != {first, tom} or p["score"] < pair["score"]
        for p in report["pairs"]
    )
    strict = client.get("/review/duplicates", params={"threshold": 0.97}, headers=staff).json()
    assert [{p["a"]["child_id"], p["b"]["child_id"]} for p in strict["pairs"]] == [{first, second}]

    merged = client.post(f"/children/{first}/merge", json={"source_id": second}, headers=staff)
    assert merged.status_code == 200, merged.text
    body = merged.json()
    assert body["child"]["n_faces"] == 3 and len(body["moved_face_ids"]) == 1
    assert body["merged_child"]["status"] == "archived" and body["merged_child"]["merged_into_id"] == first
    after = client.get("/review/duplicates", params={"threshold": 0.97}, headers=staff).json()
    assert after["pairs"] == []
    (face,) = recognize(client, staff, photos.person(7, 6))["faces"]
    assert face["decision"] == "match" and face["candidates"][0]["child_id"] == first
    assert second not in [c["child_id"] for c in face["candidates"]]
    assert runtime.gallery.check().clean
    # both children's histories show the merge
    for child_id in (first, second):
        history = client.get(f"/children/{child_id}/history", headers=staff).json()["items"]
        assert history[0]["action"] == "child.merged"
    assert (
        client.post(f"/children/{first}/merge", json={"source_id": second}, headers=staff).status_code == 409
    )
    assert (
        client.post(f"/children/{first}/merge", json={"source_id": first}, headers=staff).status_code == 400
    )
    assert client.post(f"/children/{second}/unarchive", headers=staff).status_code == 409
