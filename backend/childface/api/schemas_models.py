"""Request and response bodies of the embedding-model routes (`/models`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from childface.api.schemas import RequestBody


class ModelSpecPublic(BaseModel):
    """How the model is loaded (the weights file by name only) and its own thresholds, if any."""

    embedder: str | None
    weights: str | None = Field(description="Weights file name; null: the embedder's packaged default.")
    arch: str | None
    flip: bool
    thresholds: dict[str, float] | None = Field(
        description="accept_threshold / review_threshold used while this model is current."
    )


class ModelPublic(BaseModel):
    key: str = Field(description="Model id: embedder name and weights hash prefix.")
    name: str
    state: Literal["current", "available"]
    dim: int
    embeddings: int = Field(description="Embeddings stored (faces of every state).")
    enrolled_faces: int
    covered_faces: int = Field(description="Enrolled faces with an embedding of this model.")
    coverage: float = Field(description="covered_faces / enrolled_faces (1 with no enrolled face).")
    spec: ModelSpecPublic | None = Field(description="null: registered before specs were recorded.")
    created_at: datetime


class ModelList(BaseModel):
    models: list[ModelPublic]
    serving: str = Field(description="The model this server recognises with now.")
    note: str | None = Field(description="Set when the configured embedder is not the current model.")


class ReembedRequest(RequestBody):
    """The model to compute embeddings for; unset fields: the server's configured embedder."""

    model_config = ConfigDict(extra="forbid")

    embedder: Literal["dlib-resnet", "arcface"] | None = None
    weights: str | None = Field(default=None, max_length=4096, description="Weights path on the server.")
    arch: str | None = Field(default=None, max_length=16, description="ArcFace backbone of a .pth file.")
    flip: bool | None = Field(default=None, description="Flip test-time augmentation.")
    batch_size: int = Field(default=32, ge=1, le=1024, description="Faces per unit of work.")


class FailedFace(BaseModel):
    face_id: int
    reason: str


class ReembedJobPublic(BaseModel):
    id: int
    model_key: str
    status: Literal["running", "finished", "failed", "cancelled"]
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    heartbeat_at: datetime | None
    total: int = Field(description="Faces that need the model (enrolled and pending review).")
    done: int = Field(description="Of them, faces that have its embedding.")
    failed: int = Field(description="Faces it could not embed (listed in failures).")
    faces_per_s: float | None
    eta_s: float | None = Field(description="Seconds left at the measured speed (running jobs).")
    error: str | None
    failures: list[FailedFace]


class SwitchRequest(RequestBody):
    """Thresholds to store with the model (both or neither); without, the model's own or the configured
    ones apply."""

    model_config = ConfigDict(extra="forbid")

    accept_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    review_threshold: float | None = Field(default=None, ge=-1.0, le=1.0)


class SwitchResultPublic(BaseModel):
    before: str | None
    after: str
    thresholds: dict[str, float] | None
    topped_up: int = Field(description="Missing embeddings computed before the switch.")
    faces_without_photo: list[int] = Field(description="Enrolled faces left without its embedding.")
    overrides_removed: dict[str, float] | None = Field(
        description="Threshold overrides removed because the model carries its own thresholds."
    )
