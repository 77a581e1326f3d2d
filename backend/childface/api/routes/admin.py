"""Administration: staff accounts and API keys (admin only; settings: routes/settings.py)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from childface.api.deps import Admin, PathId, RuntimeDep
from childface.api.schemas import (
    ApiKeyCreate,
    ApiKeyIssued,
    ApiKeyPublic,
    UserCreate,
    UserPublic,
)
from childface.api.schemas_accounts import PasswordReset, UserUpdate
from childface.db.models import ApiKey, User
from childface.services import accounts

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/users", response_model=list[UserPublic])
def list_users(_: Admin, runtime: RuntimeDep) -> list[UserPublic]:
    with runtime.db.session() as session:
        return [UserPublic.model_validate(u) for u in session.scalars(select(User).order_by(User.username))]


@router.post("/users", response_model=UserPublic, status_code=201)
def create_user(body: UserCreate, principal: Admin, runtime: RuntimeDep) -> UserPublic:
    user = accounts.create_user(
        db=runtime.db, actor=principal.actor, username=body.username, password=body.password, role=body.role
    )
    return UserPublic.model_validate(user)


@router.patch("/users/{user_id}", response_model=UserPublic)
def update_user(user_id: PathId, body: UserUpdate, principal: Admin, runtime: RuntimeDep) -> UserPublic:
    """Change an account's role or deactivate/reactivate it. Deactivation ends its sessions at once.

    409 `last_admin` when the change would leave no active admin.
    """
    user = accounts.update_user(
        db=runtime.db, actor=principal.actor, user_id=user_id, role=body.role, active=body.active
    )
    return UserPublic.model_validate(user)


@router.post("/users/{user_id}/reset-password", response_model=PasswordReset)
def reset_password(user_id: PathId, principal: Admin, runtime: RuntimeDep) -> PasswordReset:
    """Give the account a one-time password (in the response, this once) and end its sessions.

    The person must choose a new password at the next sign-in.
    """
    password = accounts.reset_password(db=runtime.db, actor=principal.actor, user_id=user_id)
    with runtime.db.session() as session:
        return PasswordReset(user=UserPublic.model_validate(session.get(User, user_id)), password=password)


@router.get("/api-keys", response_model=list[ApiKeyPublic])
def list_api_keys(_: Admin, runtime: RuntimeDep) -> list[ApiKeyPublic]:
    """Keys with their prefix (to tell them apart), scopes and last use; never the key itself."""
    with runtime.db.session() as session:
        return [ApiKeyPublic.model_validate(k) for k in session.scalars(select(ApiKey).order_by(ApiKey.id))]


@router.post("/api-keys", response_model=ApiKeyIssued, status_code=201)
def create_api_key(body: ApiKeyCreate, principal: Admin, runtime: RuntimeDep) -> ApiKeyIssued:
    """Issue a key for another system. The response holds the key: it is shown this once only."""
    issued = accounts.create_api_key(db=runtime.db, actor=principal.actor, name=body.name, scopes=body.scopes)
    with runtime.db.session() as session:
        row = session.get(ApiKey, issued.id)
    return ApiKeyIssued(**ApiKeyPublic.model_validate(row).model_dump(), key=issued.key)


@router.post("/api-keys/{key_id}/revoke", response_model=ApiKeyPublic)
def revoke_api_key(key_id: PathId, principal: Admin, runtime: RuntimeDep) -> ApiKeyPublic:
    return ApiKeyPublic.model_validate(
        accounts.revoke_api_key(db=runtime.db, actor=principal.actor, key_id=key_id)
    )
