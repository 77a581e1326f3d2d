"""/children/{id}/relations, and reasons on /recognize, /verify and /review (both databases, real photos)."""

from __future__ import annotations

import io
import zipfile

from fastapi.testclient import TestClient

from .support import Photos, create_child, enroll, recognize

PORTRAIT = 6  # the aligned Tom Hanks portrait


def test_mark_list_change_and_unmark_with_roles_and_errors(client: TestClient, auth) -> None:  # noqa: ANN001
    staff, viewer = auth("staff"), auth("viewer")
    ada, ben = create_child(client, staff, "C-ADA", "Ada"), create_child(client, staff, "C-BEN", "Ben")
    dup = create_child(client, staff, "C-ADA-2", "Ada again")
    path = f"/children/{ada}/relations"

    assert client.post(path, json={"child_id": ben, "kind": "sibling"}, headers=viewer).status_code == 403
    assert client.post(path, json={"child_id": ben, "kind": "sibling"},
                       headers=auth(key="recognize")).status_code == 403
    added = client.post(path, json={"child_id": ben, "kind": "sibling"}, headers=staff)
    assert added.status_code == 201, added.text
    body = added.json()
    assert body == {**body, "child_id": ben, "external_id": "C-BEN", "name": "Ben", "status": "active",
                    "kind": "sibling", "created_by": "user:staff"}
    # both sides see it; viewers read
    assert [r["child_id"] for r in client.get(path, headers=viewer).json()] == [ben]
    assert [r["child_id"] for r in client.get(f"/children/{ben}/relations", headers=viewer).json()] == [ada]
    # the existing /children routes are untouched
    assert client.get(f"/children/{ada}", headers=viewer).json()["name"] == "Ada"

    again = client.post(path, json={"child_id": ben, "kind": "sibling"}, headers=staff)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "relation_exists")
    changed = client.post(f"/children/{ben}/relations", json={"child_id": ada, "kind": "twin"}, headers=staff)
    assert (changed.status_code, changed.json()["kind"]) == (200, "twin")

    refusals = [
        (path, {"child_id": ada, "kind": "twin"}, 400, "invalid_input"),
        (path, {"child_id": 999999, "kind": "twin"}, 404, "not_found"),
        (path, {"child_id": ben, "kind": "cousin"}, 422, "invalid_input"),
        (path, {"child_id": ben}, 422, "invalid_input"),
        ("/children/999999/relations", {"child_id": ben, "kind": "twin"}, 404, "not_found"),
    ]
    for url, payload, status, code in refusals:
        refused = client.post(url, json=payload, headers=staff)
        assert (refused.status_code, refused.json()["error"]["code"]) == (status, code), refused.text
    merged = client.post(f"/children/{ada}/merge", json={"source_id": dup}, headers=staff)
    assert merged.status_code == 200, merged.text
    refused = client.post(f"/children/{dup}/relations", json={"child_id": ben, "kind": "twin"}, headers=staff)
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "child_merged")
    assert client.get("/children/999999/relations", headers=viewer).status_code == 404

    assert client.delete(f"/children/{ben}/relations/{ada}", headers=viewer).status_code == 403
    assert client.delete(f"/children/{ben}/relations/{ada}", headers=staff).status_code == 204
    assert client.get(path, headers=viewer).json() == []
    gone = client.delete(f"/children/{ben}/relations/{ada}", headers=staff)
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "not_found")

    # every change is in both children's histories
    for child in (ada, ben):
        history = client.get(f"/children/{child}/history", headers=viewer).json()["items"]
        actions = [e["action"] for e in history if e["action"].startswith("child.relation")]
        assert actions == ["child.relation_removed", "child.relation_changed", "child.relation_added"]


def test_reasons_on_recognize_verify_and_the_review_queue(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    first, second = create_child(client, staff, "A"), create_child(client, staff, "B")
    enroll(client, staff, first, photos.person(PORTRAIT, 0), photos.person(PORTRAIT, 1))
    # the same person as a second child: held back by the consistency check, enrolled when confirmed
    enroll(client, staff, second, photos.person(PORTRAIT, 2), confirm="true")
    probe = photos.person(PORTRAIT, 5)
    (face,) = recognize(client, auth(key="recognize"), probe)["faces"]
    assert (face["decision"], face["reasons"]) == ("review", ["small_margin", "several_candidates"])
    (item,) = client.get("/review/queue", headers=staff).json()["items"]
    assert (item["id"], item["reasons"]) == (face["review_id"], ["small_margin", "several_candidates"])

    assert client.post(f"/children/{first}/relations", json={"child_id": second, "kind": "twin"},
                       headers=staff).status_code == 201
    (face,) = recognize(client, staff, probe, queue_review="false")["faces"]
    assert (face["decision"], face["reasons"]) == ("review", ["twin", "several_candidates"])
    verdict = client.post("/verify", files={"file": ("p.jpg", probe, "image/jpeg")},
                          data={"child_id": second}, headers=staff).json()
    assert (verdict["decision"], verdict["reasons"]) == ("review", ["twin", "several_candidates"])
    (stranger,) = recognize(client, staff, photos.person(2, 0), queue_review="false")["faces"]
    assert stranger["decision"] != "match" and stranger["reasons"]


def test_the_import_check_lists_the_pairs(client: TestClient, auth, photos: Photos) -> None:  # noqa: ANN001
    staff = auth("staff")
    old = create_child(client, staff, "OLD")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.jpg", photos.person(0, 0))
        zf.writestr("b.jpg", photos.person(1, 0))
    csv_text = "child_id,image,twin_of,sibling_of\nA,a.jpg,B,\nB,b.jpg,,OLD|NOBODY\n"
    check = client.post("/imports/check", headers=staff, files={
        "csv": ("kin.csv", csv_text.encode(), "text/csv"),
        "photos": ("photos.zip", archive.getvalue(), "application/zip"),
    })
    assert check.status_code == 200, check.text
    found = {(r["child_id"], r["other_id"], r["kind"], r["action"]) for r in check.json()["relations"]}
    assert found == {("A", "B", "twin", "add"), ("B", "OLD", "sibling", "add"),
                     ("B", "NOBODY", "sibling", "refused")}
    assert client.get(f"/children/{old}/relations", headers=staff).json() == []  # a check changes nothing
