"""Staff sign-in: password -> bearer token (throttled per client address), sign-out, who am I."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, Request, Response

from childface.api.deps import RuntimeDep, SignedIn, count_unauthenticated
from childface.api.rate_limit import client_address
from childface.api.schemas import LoginRequest, Me, PasswordChange, TokenResponse, UserPublic
from childface.services import accounts
from childface.services.errors import InvalidInput
from childface.services.login_throttle import ThrottlePolicy

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/login", response_model=TokenResponse, dependencies=[Depends(count_unauthenticated)])
def login(body: LoginRequest, request: Request, runtime: RuntimeDep) -> TokenResponse:
    """Exchange username and password for a session token (`Authorization: Bearer <token>`).

    A wrong name, a wrong password and an inactive account all get 401
    `invalid_credentials`. After `login_max_failures_per_account_address` failures for one
    name, or `login_max_failures_per_address` failures for any names, from one client address
    within `login_throttle_window_minutes`, that address gets 429 `too_many_attempts` (with
    Retry-After) for one window, whether the name exists or not; other addresses are not
    affected. Like every route that needs no credentials, sign-in is also rate-limited per
    address (`rate_limit_unauthenticated`, 429 `rate_limited`).
    """
    settings = runtime.settings
    ttl = timedelta(minutes=settings.session_ttl_minutes)
    token, user = accounts.login(
        db=runtime.db,
        username=body.username,
        password=body.password,
        ttl=ttl,
        client_address=client_address(request),
        policy=ThrottlePolicy.from_settings(settings),
    )
    return TokenResponse(
        access_token=token, expires_at=datetime.now(UTC) + ttl, user=UserPublic.model_validate(user)
    )


@router.post("/logout", status_code=204, response_class=Response)
def logout(principal: SignedIn, runtime: RuntimeDep) -> Response:
    """End this session (the token stops working). API keys have no session: nothing happens."""
    if principal.token is not None:
        accounts.logout(db=runtime.db, token=principal.token)
    return Response(status_code=204)


@router.post("/password", status_code=204, response_class=Response)
def change_password(body: PasswordChange, principal: SignedIn, runtime: RuntimeDep) -> Response:
    """Change the signed-in staff member's password. Every session of the account ends, this one too.

    This also lifts `must_change_password` (403 `password_change_required` elsewhere until then).
    """
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
def me(principal: SignedIn) -> Me:
    return Me(
        kind=principal.kind,  # type: ignore[arg-type]
        name=principal.name,
        role=principal.role.value if principal.role else None,
        scopes=list(principal.scopes),
        permissions=sorted(principal.permissions),
        must_change_password=principal.must_change_password,
    )
