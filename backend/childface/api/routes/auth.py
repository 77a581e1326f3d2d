"""Staff sign-in: password -> bearer token (with lockout), sign-out, who am I."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Response

from childface.api.deps import CurrentPrincipal, RuntimeDep
from childface.api.schemas import LoginRequest, Me, PasswordChange, TokenResponse, UserPublic
from childface.services import accounts
from childface.services.errors import InvalidInput

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/login", response_model=TokenResponse)
def login(body: LoginRequest, runtime: RuntimeDep) -> TokenResponse:
    """Exchange username and password for a session token (`Authorization: Bearer <token>`).

    After `login_max_failures` wrong passwords in a row the account is locked
    for `login_lockout_minutes` (423 `account_locked`).
    """
    settings = runtime.settings
    ttl = timedelta(minutes=settings.session_ttl_minutes)
    token, user = accounts.login(
        db=runtime.db,
        username=body.username,
        password=body.password,
        ttl=ttl,
        max_failures=settings.login_max_failures,
        lockout=timedelta(minutes=settings.login_lockout_minutes),
    )
    return TokenResponse(
        access_token=token, expires_at=datetime.now(UTC) + ttl, user=UserPublic.model_validate(user)
    )


@router.post("/logout", status_code=204, response_class=Response)
def logout(principal: CurrentPrincipal, runtime: RuntimeDep) -> Response:
    """End this session (the token stops working). API keys have no session: nothing happens."""
    if principal.token is not None:
        accounts.logout(db=runtime.db, token=principal.token)
    return Response(status_code=204)


@router.post("/password", status_code=204, response_class=Response)
def change_password(body: PasswordChange, principal: CurrentPrincipal, runtime: RuntimeDep) -> Response:
    """Change the signed-in staff member's password. Every session of the account ends, this one too."""
    if principal.kind != "user":
        raise InvalidInput("API keys have no password; sign in as a staff member")
    accounts.change_password(
        db=runtime.db,
        actor=principal.actor,
        username=principal.name,
        current=body.current_password,
        new=body.new_password,
    )
    return Response(status_code=204)


@router.get("/me", response_model=Me)
def me(principal: CurrentPrincipal) -> Me:
    return Me(
        kind=principal.kind,  # type: ignore[arg-type]
        name=principal.name,
        role=principal.role.value if principal.role else None,
        scopes=list(principal.scopes),
        permissions=sorted(principal.permissions),
    )
