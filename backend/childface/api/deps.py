"""Request dependencies: the runtime, who is calling, and what they may do.

Two ways in: staff send `Authorization: Bearer <session token>` (from
`POST /auth/login`), other systems send `X-API-Key: <key>`. Each caller gets a
set of permissions:

| permission | staff roles            | API key scopes      | allows                                  |
|------------|------------------------|---------------------|-----------------------------------------|
| read       | viewer, staff, admin   | enroll, admin       | children, faces, thumbnails, audit      |
| enroll     | staff, admin           | enroll, admin       | create children, upload photos          |
| write      | staff, admin           | admin               | edit, archive, merge, faces, review     |
| recognize  | staff, admin           | recognize, admin    | /recognize, /verify, /detect            |
| erase      | admin                  | admin               | irreversible erasure                    |
| admin      | admin                  | admin               | users, API keys, settings, calibration  |

No credentials -> 401; credentials without the permission -> 403. Requests
without valid credentials count against the address's rate limit (429 over it).
A staff member who must change the password (first start, after a reset) gets
403 `password_change_required` everywhere except `POST /auth/password`,
`GET /auth/me` and `POST /auth/logout` (they use `SignedIn`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Path, Query, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from childface.api.rate_limit import client_address
from childface.api.schemas import MAX_ROW_ID
from childface.db.models import ApiKey, Role
from childface.db.session import Actor
from childface.services import accounts
from childface.services.errors import Forbidden, Unauthorized
from childface.services.runtime import Runtime

ROLE_PERMISSIONS: dict[Role, frozenset[str]] = {
    Role.viewer: frozenset({"read"}),
    Role.staff: frozenset({"read", "enroll", "write", "recognize"}),
    Role.admin: frozenset({"read", "enroll", "write", "recognize", "erase", "admin"}),
}
SCOPE_PERMISSIONS: dict[str, frozenset[str]] = {
    "recognize": frozenset({"recognize"}),
    "enroll": frozenset({"read", "enroll"}),
    "admin": ROLE_PERMISSIONS[Role.admin],
}
#: an API key's `last_used_at` is written at most this often (a write per request would
#: serialise every recognition on SQLite's single writer)
LAST_USED_GRANULARITY = timedelta(minutes=1)

_bearer = HTTPBearer(auto_error=False, description="Staff session token from POST /auth/login")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key of another system")


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
#: a row id in a path or a query string (out-of-range numbers are a 422, never a database error)
PathId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]
QueryId = Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)]
Offset = Annotated[int, Query(ge=0, le=MAX_ROW_ID)]


@dataclass(frozen=True)
class Principal:
    """The authenticated caller."""

    kind: str  # "user" | "api_key"
    name: str
    permissions: frozenset[str]
    role: Role | None = None
    scopes: tuple[str, ...] = ()
    token: str | None = None
    must_change_password: bool = False

    @property
    def actor(self) -> Actor:
        return Actor(self.kind, self.name)


def _touch_key(runtime: Runtime, key: ApiKey) -> None:
    now = datetime.now(UTC)
    if key.last_used_at is not None and now - key.last_used_at < LAST_USED_GRANULARITY:
        return
    with runtime.db.transaction() as session:
        row = session.get(ApiKey, key.id)
        if row is not None:
            row.last_used_at = now


def get_signed_in(
    request: Request,
    runtime: RuntimeDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Principal:
    """The caller, even one who must change the password first (only the /auth routes use this)."""
    try:
        return _authenticate(runtime, bearer, api_key)
    except Unauthorized:
        count_unauthenticated(request)  # 429 instead, once over the limit
        raise


SignedIn = Annotated[Principal, Depends(get_signed_in)]


def get_principal(principal: SignedIn) -> Principal:
    """The caller, refused (403) while a staff member must still change a password set for them."""
    if principal.must_change_password:
        raise Forbidden(
            "change your password first (POST /auth/password): an administrator or the first start set it",
            code="password_change_required",
        )
    return principal


def count_unauthenticated(request: Request) -> None:
    """Count a request without valid credentials against its address's rate limit; 429 over it."""
    request.app.state.rate_limit.hit(client_address(request))


def _authenticate(
    runtime: Runtime, bearer: HTTPAuthorizationCredentials | None, api_key: str | None
) -> Principal:
    if api_key:
        key = accounts.find_api_key(db=runtime.db, plaintext=api_key)
        if key is None:
            raise Unauthorized("unknown or revoked API key", code="invalid_api_key")
        _touch_key(runtime, key)
        permissions = frozenset().union(*(SCOPE_PERMISSIONS.get(s, frozenset()) for s in key.scopes))
        return Principal(kind="api_key", name=key.name, permissions=permissions, scopes=tuple(key.scopes))
    if bearer is not None and bearer.credentials:
        user = accounts.user_for_token(db=runtime.db, token=bearer.credentials)
        if user is None:
            raise Unauthorized("the session token is invalid or expired; sign in again", code="invalid_token")
        return Principal(
            kind="user",
            name=user.username,
            permissions=ROLE_PERMISSIONS[user.role],
            role=user.role,
            token=bearer.credentials,
            must_change_password=user.must_change_password,
        )
    raise Unauthorized("sign in (Authorization: Bearer <token>) or send an X-API-Key header")


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require(permission: str):  # noqa: ANN201 - returns a FastAPI dependency
    def check(principal: CurrentPrincipal) -> Principal:
        if permission not in principal.permissions:
            raise Forbidden(f"this needs the {permission!r} permission", code="forbidden")
        return principal

    return check


Reader = Annotated[Principal, Depends(require("read"))]
Enroller = Annotated[Principal, Depends(require("enroll"))]
Writer = Annotated[Principal, Depends(require("write"))]
Recognizer = Annotated[Principal, Depends(require("recognize"))]
Eraser = Annotated[Principal, Depends(require("erase"))]
Admin = Annotated[Principal, Depends(require("admin"))]
