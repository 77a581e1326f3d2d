"""Request/response schemas of the sibling and twin routes (`/children/{id}/relations`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from childface.api.schemas import RequestBody, RowId

RelationKindName = Literal["sibling", "twin"]


class RelationCreate(RequestBody):
    child_id: RowId = Field(description="The other child.")
    kind: RelationKindName = Field(
        description="sibling: a match must lead this child by sibling_margin; twin: by twin_margin."
    )


class RelationPublic(BaseModel):
    """One relative of the child in the path."""

    child_id: int = Field(description="The related child.")
    external_id: str
    name: str
    status: Literal["active", "archived"]
    kind: RelationKindName
    created_by: str = Field(description="Who marked the pair as it is now, e.g. user:anna.")
    created_at: datetime
