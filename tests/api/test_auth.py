"""Sign-in, lockout, sessions, API keys, and the rule that nothing is served without credentials."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from childface.db import Actor
from childface.services import accounts

from .support import PASSWORD

#: the only routes that answer without credentials: they reveal nothing about children
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("POST", "/auth/login")}


def test_every_route_needs_credentials(client: TestClient, app: FastAPI) -> None:
    schema = client.get("/openapi.json").json()
    assert client.get("/docs").status_code == 200
    checked = 0
    for path, operations in schema["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", "1", path)
        for method in operations:
            if (method.upper(), path) in PUBLIC:
                continue
            response = client.request(method.upper(), concrete)
            assert response.status_code == 401, (method, path, response.status_code, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            bad_key = client.request(method.upper(), concrete, headers={"X-API-Key": "cfk_not-a-key"})
            assert bad_key.status_code == 401, (method, path)
            bad_token = client.request(method.upper(), concrete, headers={"Authorization": "Bearer nope"})
            assert bad_token.status_code == 401, (method, path)
            checked += 1
    assert checked >= 30


def test_login_me_logout(client: TestClient, auth, runtime) -> None:  # noqa: ANN001
    auth("viewer")  # creates the account
    response = client.post("/auth/login", json={"username": "viewer", "password": PASSWORD})
    assert response.status_code == 200, response.text
    token = response.json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    me = client.get("/auth/me", headers=headers).json()
    assert me == {"kind": "user", "name": "viewer", "role": "viewer", "scopes": [], "permissions": ["read"]}
    assert client.post("/auth/logout", headers=headers).status_code == 204
    assert client.get("/auth/me", headers=headers).status_code == 401


def test_change_password_ends_sessions_and_is_audited(client: TestClient, auth, runtime) -> None:  # noqa: ANN001
    headers = auth("staff")
    other = client.post("/auth/login", json={"username": "staff", "password": PASSWORD}).json()[
        "access_token"
    ]
    wrong = client.post(
        "/auth/password", json={"current_password": "not it", "new_password": "a new secret"}, headers=headers
    )
    assert wrong.status_code == 400 and wrong.json()["error"]["code"] == "wrong_password"
    short = client.post(
        "/auth/password", json={"current_password": PASSWORD, "new_password": "short"}, headers=headers
    )
    assert short.status_code == 422
    changed = client.post(
        "/auth/password", json={"current_password": PASSWORD, "new_password": "a new secret"}, headers=headers
    )
    assert changed.status_code == 204, changed.text
    for token in (headers["Authorization"].removeprefix("Bearer "), other):
        assert client.get("/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    assert client.post("/auth/login", json={"username": "staff", "password": PASSWORD}).status_code == 401
    fresh = client.post("/auth/login", json={"username": "staff", "password": "a new secret"})
    assert fresh.status_code == 200
    admin = auth("admin")
    (event,) = client.get("/audit", params={"action": "user.password_changed"}, headers=admin).json()["items"]
    assert event["actor"] == "user:staff" and "new secret" not in str(event)
    key = auth(key="recognize")
    refused = client.post(
        "/auth/password", json={"current_password": "x", "new_password": "whatever1"}, headers=key
    )
    assert refused.status_code == 400


def test_lockout_after_repeated_failures(client: TestClient, auth, runtime) -> None:  # noqa: ANN001
    auth("staff")
    limit = runtime.settings.login_max_failures
    for _ in range(limit):
        wrong = client.post("/auth/login", json={"username": "staff", "password": "wrong password"})
        assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_credentials"
    locked = client.post("/auth/login", json={"username": "staff", "password": PASSWORD})
    assert locked.status_code == 423 and locked.json()["error"]["code"] == "account_locked"
    unknown = client.post("/auth/login", json={"username": "nobody", "password": PASSWORD})
    assert unknown.status_code == 401 and unknown.json()["error"]["code"] == "invalid_credentials"


def test_api_keys_scopes_and_revocation(client: TestClient, auth) -> None:  # noqa: ANN001
    admin = auth("admin")
    created = client.post(
        "/admin/api-keys", json={"name": "door-east", "scopes": ["recognize"]}, headers=admin
    )
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    listed = client.get("/admin/api-keys", headers=admin).json()
    assert [k["name"] for k in listed] == ["door-east"] and "key" not in listed[0]
    headers = {"X-API-Key": key}
    me = client.get("/auth/me", headers=headers).json()
    assert me["kind"] == "api_key" and me["scopes"] == ["recognize"] and me["permissions"] == ["recognize"]
    assert client.get("/children", headers=headers).status_code == 403
    assert client.get("/admin/users", headers=headers).status_code == 403
    revoked = client.post(f"/admin/api-keys/{created.json()['id']}/revoke", headers=admin)
    assert revoked.json()["revoked"] is True
    assert client.get("/auth/me", headers=headers).json()["error"]["code"] == "invalid_api_key"
    bad = client.post("/admin/api-keys", json={"name": "x", "scopes": ["everything"]}, headers=admin)
    assert bad.status_code == 422


def test_admin_manages_users_and_others_may_not(client: TestClient, auth) -> None:  # noqa: ANN001
    admin = auth("admin")
    body = {"username": "carol", "password": "a long password", "role": "viewer"}
    assert client.post("/admin/users", json=body, headers=auth("staff")).status_code == 403
    created = client.post("/admin/users", json=body, headers=admin)
    assert created.status_code == 201 and created.json()["role"] == "viewer"
    assert client.post("/admin/users", json=body, headers=admin).json()["error"]["code"] == "username_taken"
    assert "carol" in [u["username"] for u in client.get("/admin/users", headers=admin).json()]
    events = client.get("/audit", params={"action": "user.created"}, headers=admin).json()["items"]
    assert events[0]["actor"] == "user:admin" and events[0]["after"]["username"] == "carol"


def test_every_audit_event_names_its_actor(client: TestClient, auth, runtime) -> None:  # noqa: ANN001
    key = auth(key="enroll")
    child = client.post("/children", json={"external_id": "A1", "name": "Ada"}, headers=key).json()
    client.patch(f"/children/{child['id']}", json={"notes": "x"}, headers=auth("staff"))
    accounts.create_user(
        db=runtime.db, actor=Actor("system", "cli"), username="dora", password=PASSWORD, role="viewer"
    )
    events = client.get("/audit", params={"limit": 500}, headers=auth("admin")).json()["items"]
    by_action = {e["action"]: e["actor"] for e in events}
    assert by_action["child.created"] == "api_key:test-enroll"
    assert by_action["child.updated"] == "user:staff"
    assert all(re.fullmatch(r"(user|api_key|system):.+", e["actor"]) for e in events)
