"""Bodies of `POST /audit/{seq}/undo`."""

from __future__ import annotations

from pydantic import BaseModel, Field


class UndoPublic(BaseModel):
    """An undo that was applied (itself an audit event, which can be undone: a redo)."""

    seq: int = Field(description="The undo's own audit event (action `audit.undone`).")
    undone_seq: int = Field(description="The event that was undone.")
    action: str = Field(description="The undone event's action; `audit.undone` when this undo is a redo.")
    redo: bool = Field(description="True when the undone event was itself an undo.")
    summary: str = Field(description="What the undo restored, in words.")
    face_ids: list[int] = Field(description="Faces whose state or searchability the undo restored.")
    child_ids: list[int] = Field(description="Children the undone event concerns.")

