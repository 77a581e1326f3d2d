"""Request and response bodies of staff-account administration (`/admin/users/...`)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

from childface.api.schemas import RequestBody, UserPublic


class UserUpdate(RequestBody):
    """Change a role and/or whether the account may sign in; fields left out stay as they are."""

    # a misspelt field would otherwise change nothing and answer 200
    model_config = ConfigDict(extra="forbid")

    role: Literal["admin", "staff", "viewer"] | None = None
    active: bool | None = None

    @model_validator(mode="after")
    def _something(self) -> UserUpdate:
        if self.role is None and self.active is None:
            raise ValueError("give a role, active, or both")
        return self


class PasswordReset(BaseModel):
    """A one-time password: shown this once; the person must change it at the next sign-in."""

    user: UserPublic
    password: str
