"""Sign-in and its throttle, rate limits, 5xx request ids, sessions, API keys, and the rule that
nothing is served without credentials."""

from __future__ import annotations

import logging
import re

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient

from childface.api.app import RequestIdFilter, create_app
from childface.db import Actor
from childface.services import accounts

from .support import PASSWORD

#: the only routes that answer without credentials: they reveal nothing about children
PUBLIC = {("GET", "/healthz"), ("GET", "/readyz"), ("POST", "/auth/login")}


def test_every_route_needs_credentials(runtime) -> None:  # noqa: ANN001
    # three refused requests per route: more than the default budget for requests without credentials
    roomy = runtime.settings.model_copy(update={"rate_limit_unauthenticated": "1000/minute"})
    client = TestClient(create_app(roomy, runtime))
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
    assert me == {"kind": "user", "name": "viewer", "role": "viewer", "scopes": [], "permissions": ["read"],
                  "must_change_password": False}
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


def _from(app: FastAPI, address: str) -> TestClient:
    """A client whose requests come from `address` (what the server sees as the client's host)."""
    return TestClient(app, client=(address, 50000))


def _sign_in(http: TestClient, username: str, password: str) -> tuple[int, str]:
    response = http.post("/auth/login", json={"username": username, "password": password})
    return response.status_code, response.json().get("error", {}).get("code", "")


class _CountingHasher(PasswordHasher):
    """Real argon2 (cheap parameters) that counts password checks."""

    def __init__(self) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.verified = 0

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002 - the base's name
        self.verified += 1
        return super().verify(hash, password)


def test_sign_in_is_throttled_per_address_not_per_account(
    app: FastAPI, auth, runtime, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    """Failures slow down the address they come from, for known and unknown names alike; staff elsewhere
    sign in as usual, and a throttled attempt checks no password."""
    auth("staff")  # creates the account
    hasher = _CountingHasher()
    monkeypatch.setattr(accounts, "_hasher", hasher)
    per_account = runtime.settings.login_max_failures_per_account_address
    attacker, other_attacker = _from(app, "203.0.113.7"), _from(app, "203.0.113.8")
    office = _from(app, "10.0.0.5")
    for name, http in (("staff", attacker), ("nobody", other_attacker)):
        for _ in range(per_account):
            assert _sign_in(http, name, "wrong password") == (401, "invalid_credentials")
    checked = hasher.verified
    known = attacker.post("/auth/login", json={"username": "staff", "password": PASSWORD})
    unknown = other_attacker.post("/auth/login", json={"username": "nobody", "password": PASSWORD})
    assert hasher.verified == checked == 2 * per_account  # refused before any password check
    for refused in (known, unknown):
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_attempts"
        assert 0 < int(refused.headers["Retry-After"]) <= 60 * runtime.settings.login_throttle_window_minutes
    # the same answer, to the wait in seconds (which may tick between the two requests)
    assert re.sub(r"\d+", "N", known.text) == re.sub(r"\d+", "N", unknown.text)
    assert "lock" not in known.text and "staff" not in known.text
    assert _sign_in(office, "staff", PASSWORD) == (200, "")
    # a success resets that address's count for the name: failures must come in a row to throttle
    for _ in range(2):
        for _ in range(per_account - 1):
            assert _sign_in(office, "staff", "wrong password") == (401, "invalid_credentials")
        assert _sign_in(office, "staff", PASSWORD) == (200, "")


def test_many_names_from_one_address_are_throttled(app: FastAPI, auth, runtime) -> None:  # noqa: ANN001
    auth("staff")
    http = _from(app, "198.51.100.4")
    for n in range(runtime.settings.login_max_failures_per_address):
        assert _sign_in(http, f"guess{n}", "wrong password") == (401, "invalid_credentials")
    assert _sign_in(http, "staff", PASSWORD) == (429, "too_many_attempts")
    assert _sign_in(_from(app, "198.51.100.5"), "staff", PASSWORD) == (200, "")


def test_requests_without_credentials_are_rate_limited(runtime, auth) -> None:  # noqa: ANN001
    """Sign-in, the API docs and requests with missing or bad credentials share a budget per address."""
    app = create_app(runtime.settings.model_copy(update={"rate_limit_unauthenticated": "6/minute"}), runtime)
    staff = auth("staff")
    http, other = _from(app, "192.0.2.1"), _from(app, "192.0.2.2")
    assert _sign_in(http, "nobody", "wrong password") == (401, "invalid_credentials")
    assert http.get("/docs").status_code == 200
    assert http.get("/openapi.json").status_code == 200
    assert http.get("/children").status_code == 401
    assert http.get("/children", headers={"X-API-Key": "cfk_guess"}).status_code == 401
    assert http.get("/children", headers={"Authorization": "Bearer guess"}).status_code == 401
    for method, path in (("POST", "/auth/login"), ("GET", "/docs"), ("GET", "/children")):
        refused = http.request(method, path, json={"username": "staff", "password": PASSWORD})
        assert refused.status_code == 429, (method, path, refused.text)
        assert refused.json()["error"]["code"] == "rate_limited"
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert refused.headers["X-Request-ID"]
    # valid credentials and the health probes are never limited; other addresses have their own budget
    assert http.get("/children", headers=staff).status_code == 200
    assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
    assert _sign_in(other, "staff", PASSWORD) == (200, "")


class _LogLines(logging.Handler):
    """Keeps each record as the server's log line would show it: `[request id] message`."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("[%(request_id)s] %(message)s"))
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_a_5xx_names_its_request_id_in_body_header_and_log(app: FastAPI) -> None:
    def explode() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/test-only/explode", explode)  # on this test's app instance, not the product
    handler = _LogLines()
    lines = handler.lines
    logger = logging.getLogger("childface.api")
    logger.addHandler(handler)
    try:
        with TestClient(app) as http:
            given = http.get("/test-only/explode", headers={"X-Request-ID": "probe-42"})
            made = http.get("/test-only/explode")
    finally:
        logger.removeHandler(handler)
    for response, expected in ((given, "probe-42"), (made, made.headers.get("X-Request-ID"))):
        assert response.status_code == 500
        error = response.json()["error"]
        assert expected and response.headers["X-Request-ID"] == expected
        assert error["code"] == "internal_error" and error["request_id"] == expected
        assert expected in error["message"] and "boom" not in error["message"]
        assert any(line.startswith(f"[{expected}] unhandled error") for line in lines), lines
    assert not any(line.startswith("[-]") for line in lines if "unhandled" in line)


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
