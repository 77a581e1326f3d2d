"""Children over HTTP: the contract (POST /children -> id), listing, editing, archiving, permissions."""

from __future__ import annotations

from fastapi.testclient import TestClient

from .support import create_child


def test_create_child_returns_id_and_lists_it(client: TestClient, auth) -> None:  # noqa: ANN001
    staff = auth("staff")
    response = client.post("/children", json={"external_id": "K-1", "name": "Ada Lovelace"}, headers=staff)
    assert response.status_code == 201, response.text
    child = response.json()
    assert isinstance(child["id"], int)
    assert child["external_id"] == "K-1" and child["name"] == "Ada Lovelace" and child["status"] == "active"
    assert client.get(f"/children/{child['id']}", headers=auth("viewer")).json()["name"] == "Ada Lovelace"


def test_duplicate_external_id_is_a_conflict(client: TestClient, auth) -> None:  # noqa: ANN001
    create_child(client, auth("staff"), "K-1")
    response = client.post("/children", json={"external_id": "K-1", "name": "Other"}, headers=auth("staff"))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


def test_list_search_filter_and_paginate(client: TestClient, auth) -> None:  # noqa: ANN001
    staff = auth("staff")
    for n, (name, group) in enumerate([("Ada", "red"), ("Ben", "red"), ("Cleo", "blue"), ("Adam", "blue")]):
        client.post("/children", json={"external_id": f"E{n}", "name": name, "group": group}, headers=staff)
    viewer = auth("viewer")
    found = client.get("/children", params={"q": "ada"}, headers=viewer).json()
    assert sorted(c["name"] for c in found["items"]) == ["Ada", "Adam"] and found["total"] == 2
    assert client.get("/children", params={"q": "e2"}, headers=viewer).json()["items"][0]["name"] == "Cleo"
    red = client.get("/children", params={"group": "red"}, headers=viewer).json()
    assert {c["name"] for c in red["items"]} == {"Ada", "Ben"}
    page = client.get("/children", params={"limit": 3, "offset": 3}, headers=viewer).json()
    assert page["total"] == 4 and len(page["items"]) == 1 and page["items"][0]["name"] == "Cleo"


def test_update_archive_unarchive(client: TestClient, auth) -> None:  # noqa: ANN001
    staff = auth("staff")
    child_id = create_child(client, staff, "K-9", "Finn")
    updated = client.patch(f"/children/{child_id}", json={"name": "Finn B.", "group": "owls"}, headers=staff)
    assert (
        updated.status_code == 200
        and updated.json()["name"] == "Finn B."
        and updated.json()["group"] == "owls"
    )
    assert client.post(f"/children/{child_id}/archive", headers=staff).json()["status"] == "archived"
    archived = client.get("/children", params={"status": "archived"}, headers=staff).json()
    assert [c["id"] for c in archived["items"]] == [child_id]
    assert client.post(f"/children/{child_id}/archive", headers=staff).status_code == 409
    assert client.post(f"/children/{child_id}/unarchive", headers=staff).json()["status"] == "active"
    history = client.get(f"/children/{child_id}/history", headers=staff).json()
    assert [e["action"] for e in history["items"]] == [
        "child.unarchived",
        "child.archived",
        "child.updated",
        "child.created",
    ]
    assert all(e["actor"] == "user:staff" for e in history["items"])


def test_roles_decide_who_may_write(client: TestClient, auth) -> None:  # noqa: ANN001
    body = {"external_id": "R1", "name": "Role"}
    assert client.post("/children", json=body, headers=auth("viewer")).status_code == 403
    assert client.post("/children", json=body, headers=auth(key="recognize")).status_code == 403
    assert client.post("/children", json=body, headers=auth(key="enroll")).status_code == 201
    assert client.get("/children", headers=auth(key="recognize")).status_code == 403
    child_id = client.get("/children", headers=auth("viewer")).json()["items"][0]["id"]
    # archiving needs write: an enroll key may add children and photos, not change them
    assert client.post(f"/children/{child_id}/archive", headers=auth(key="enroll")).status_code == 403
    assert client.get("/children/999999", headers=auth("viewer")).json()["error"]["code"] == "not_found"


def test_invalid_bodies_are_clear_4xx(client: TestClient, auth) -> None:  # noqa: ANN001
    staff = auth("staff")
    missing = client.post("/children", json={"name": "No id"}, headers=staff)
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "invalid_input"
    blank = client.post("/children", json={"external_id": "   ", "name": "x"}, headers=staff)
    assert blank.status_code == 400 and blank.json()["error"]["code"] == "invalid_input"
    not_json = client.post(
        "/children", content=b"{nope", headers={**staff, "Content-Type": "application/json"}
    )
    assert not_json.status_code == 422 and "error" in not_json.json()
    assert client.get("/children/abc", headers=staff).status_code == 422
    assert client.delete("/children", headers=staff).json()["error"]["code"] == "method_not_allowed"
    assert client.get("/nowhere", headers=staff).json()["error"]["code"] == "not_found"
