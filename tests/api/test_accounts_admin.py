"""Staff accounts managed by an admin: role, deactivation, password reset, forced password change,
and the rule that the last active admin stays."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient
from sqlalchemy import select

from childface.db import Actor
from childface.db.models import Role, User
from childface.services import accounts

from .support import PASSWORD, TEST_ACTOR


def _sign_in(client: TestClient, username: str, password: str) -> dict[str, str]:
    response = client.post("/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _new_user(client: TestClient, admin: dict[str, str], username: str, role: str = "staff") -> int:
    body = {"username": username, "password": PASSWORD, "role": role}
    created = client.post("/admin/users", json=body, headers=admin)
    assert created.status_code == 201, created.text
    return created.json()["id"]


def _events(client: TestClient, admin: dict[str, str], action: str) -> list[dict]:
    return client.get("/audit", params={"action": action}, headers=admin).json()["items"]


def test_role_change_and_deactivation_end_what_they_should(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    admin = auth("admin")
    carol_id = _new_user(client, admin, "carol")
    carol = _sign_in(client, "carol", PASSWORD)
    assert client.patch(f"/admin/users/{carol_id}", json={"role": "viewer"}, headers=carol).status_code == 403

    demoted = client.patch(f"/admin/users/{carol_id}", json={"role": "viewer"}, headers=admin)
    assert demoted.status_code == 200 and demoted.json()["role"] == "viewer"
    # the session stays, with the new role's permissions at once
    assert client.get("/auth/me", headers=carol).json()["permissions"] == ["read"]

    off = client.patch(f"/admin/users/{carol_id}", json={"active": False}, headers=admin)
    assert off.status_code == 200 and off.json()["active"] is False
    assert client.get("/auth/me", headers=carol).status_code == 401
    refused = client.post("/auth/login", json={"username": "carol", "password": PASSWORD})
    assert refused.status_code == 401
    assert client.patch(f"/admin/users/{carol_id}", json={"active": True}, headers=admin).json()["active"]
    _sign_in(client, "carol", PASSWORD)

    updates = _events(client, admin, "user.updated")
    assert [(e["before"], e["after"]) for e in reversed(updates)] == [
        ({"username": "carol", "role": "staff", "active": True},
         {"username": "carol", "role": "viewer", "active": True}),
        ({"username": "carol", "role": "viewer", "active": True},
         {"username": "carol", "role": "viewer", "active": False}),
        ({"username": "carol", "role": "viewer", "active": False},
         {"username": "carol", "role": "viewer", "active": True}),
    ]
    assert all(e["actor"] == "user:admin" for e in updates)
    # a request that changes nothing answers the account as it is, and is not an event
    same = client.patch(f"/admin/users/{carol_id}", json={"role": "viewer"}, headers=admin)
    assert same.status_code == 200 and len(_events(client, admin, "user.updated")) == 3


def test_bad_updates_are_refused(client: TestClient, auth: Callable[..., dict[str, str]]) -> None:
    admin = auth("admin")
    assert client.patch("/admin/users/999999", json={"active": False}, headers=admin).status_code == 404
    carol_id = _new_user(client, admin, "carol")
    for body in ({}, {"role": "owner"}, {"active": "maybe"}, {"role": "viewer", "extra": 1}):
        response = client.patch(f"/admin/users/{carol_id}", json=body, headers=admin)
        assert response.status_code == 422, (body, response.text)


def test_the_last_active_admin_cannot_demote_or_deactivate_themselves(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    admin = auth("admin")
    me = next(u for u in client.get("/admin/users", headers=admin).json() if u["username"] == "admin")
    for body in ({"role": "staff"}, {"active": False}, {"role": "viewer", "active": False}):
        refused = client.patch(f"/admin/users/{me['id']}", json=body, headers=admin)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "last_admin"
    assert client.get("/auth/me", headers=admin).json()["role"] == "admin"
    assert _events(client, admin, "user.updated") == []

    # with a second active admin, stepping down is fine
    _new_user(client, admin, "dana", role="admin")
    stepped = client.patch(f"/admin/users/{me['id']}", json={"role": "staff"}, headers=admin)
    assert stepped.status_code == 200 and stepped.json()["role"] == "staff"
    dana = _sign_in(client, "dana", PASSWORD)
    users = client.get("/admin/users", headers=dana).json()
    dana_id = next(u["id"] for u in users if u["username"] == "dana")
    last = client.patch(f"/admin/users/{dana_id}", json={"active": False}, headers=dana)
    assert last.status_code == 409 and last.json()["error"]["code"] == "last_admin"


def test_reset_password_forces_a_change_before_anything_else(
    client: TestClient, auth: Callable[..., dict[str, str]]
) -> None:
    admin = auth("admin")
    carol_id = _new_user(client, admin, "carol")
    old_session = _sign_in(client, "carol", PASSWORD)

    reset = client.post(f"/admin/users/{carol_id}/reset-password", headers=admin)
    assert reset.status_code == 200, reset.text
    one_time = reset.json()["password"]
    assert len(one_time) >= 12 and reset.json()["user"]["must_change_password"] is True
    assert client.get("/auth/me", headers=old_session).status_code == 401  # her sessions ended
    assert client.post("/auth/login", json={"username": "carol", "password": PASSWORD}).status_code == 401

    carol = _sign_in(client, "carol", one_time)
    me = client.get("/auth/me", headers=carol)
    assert me.status_code == 200 and me.json()["must_change_password"] is True
    for method, path in (("GET", "/children"), ("GET", "/audit"), ("POST", "/children")):
        blocked = client.request(method, path, headers=carol, json={"external_id": "X", "name": "X"})
        assert blocked.status_code == 403, (path, blocked.text)
        assert blocked.json()["error"]["code"] == "password_change_required"
    same = client.post("/auth/password", headers=carol,
                       json={"current_password": one_time, "new_password": one_time})
    assert same.status_code == 400 and same.json()["error"]["code"] == "weak_password"
    changed = client.post("/auth/password", headers=carol,
                          json={"current_password": one_time, "new_password": "carol's own secret"})
    assert changed.status_code == 204, changed.text

    carol = _sign_in(client, "carol", "carol's own secret")
    assert client.get("/auth/me", headers=carol).json()["must_change_password"] is False
    assert client.get("/children", headers=carol).status_code == 200

    event = _events(client, admin, "user.password_reset")[0]
    assert event["actor"] == "user:admin" and event["target_id"] == str(carol_id)
    assert one_time not in json.dumps(event)


def test_sign_out_works_while_a_change_is_required(
    client: TestClient, auth: Callable[..., dict[str, str]], runtime
) -> None:  # noqa: ANN001
    auth("viewer")  # the fixture's cheap hasher
    one_time = accounts.reset_password(db=runtime.db, actor=Actor("system", "cli"), username="viewer")
    viewer = _sign_in(client, "viewer", one_time)
    assert client.post("/auth/logout", headers=viewer).status_code == 204
    assert client.get("/auth/me", headers=viewer).status_code == 401
    event = _events(client, auth("admin"), "user.password_reset")[0]
    assert event["actor"] == "system:cli"


def test_first_start_admin_must_change_password(client: TestClient, auth, runtime) -> None:  # noqa: ANN001
    auth(key="recognize")  # patches the hasher; an API key is no staff account
    password = accounts.ensure_first_admin(db=runtime.db, actor=Actor("system", "first-start"))
    assert password is not None
    admin = _sign_in(client, "admin", password)
    assert client.get("/auth/me", headers=admin).json()["must_change_password"] is True
    assert client.get("/admin/users", headers=admin).json()["error"]["code"] == "password_change_required"
    client.post("/auth/password", headers=admin,
                json={"current_password": password, "new_password": "the admin's own one"})
    admin = _sign_in(client, "admin", "the admin's own one")
    assert client.get("/admin/users", headers=admin).status_code == 200


def test_two_admins_stepping_down_at_once_leave_one_admin(auth, runtime) -> None:  # noqa: ANN001
    auth(key="recognize")  # the fixture's cheap hasher
    ids = [
        accounts.create_user(db=runtime.db, actor=TEST_ACTOR, username=name, password=PASSWORD,
                             role="admin").id
        for name in ("ann", "bob")
    ]
    start = threading.Barrier(2)

    def step_down(user_id: int) -> str:
        start.wait()
        try:
            accounts.update_user(db=runtime.db, actor=TEST_ACTOR, user_id=user_id, role="staff")
        except accounts.AccountError as exc:
            return exc.code
        return "ok"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(step_down, ids))
    assert outcomes == ["last_admin", "ok"]
    with runtime.db.session() as session:
        admins = session.scalars(select(User.username).where(User.role == Role.admin, User.active)).all()
    assert len(admins) == 1
