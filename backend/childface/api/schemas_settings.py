"""Request and response bodies of the settings routes (`GET` / `PATCH /admin/settings`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from childface.api.schemas import RequestBody, SettingsView


class SettingChange(BaseModel):
    """Who last changed a setting at run time, and when."""

    value: float | int
    updated_by: str
    updated_at: datetime


class EffectiveSettingsView(SettingsView):
    """The settings in force. `configured`: the server's own values, which apply again on reset."""

    adjustable: list[str] = Field(description="Settings an admin may change here, without a restart.")
    configured: dict[str, float | int] = Field(
        description="The server's configured value of each adjustable setting."
    )
    changed: dict[str, SettingChange] = Field(
        description="Adjustable settings changed at run time (they override the configured value)."
    )


class SettingsPatch(RequestBody):
    """New values for some adjustable settings; `null` sets one back to the server's configured value.

    Checked as a whole: thresholds between -1 and 1, review threshold not above
    the accept threshold, margin 0..2, top_k 1..100.
    """

    model_config = ConfigDict(extra="forbid")

    accept_threshold: float | None = Field(default=None, description="Score for a match.")
    review_threshold: float | None = Field(default=None, description="Score for human review.")
    match_margin: float | None = Field(default=None, description="Lead over the next child for a match.")
    top_k: int | None = Field(default=None, description="Candidates returned per face.")
