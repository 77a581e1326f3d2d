"""Public request and response schemas of the HTTP API (separate from the table models).

Clients (the admin UI included) may import these; they depend on pydantic only.
Field names here are the contract other systems rely on: add fields, never
rename or remove them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

Decision = Literal["match", "review", "unknown"]

#: Row ids are 64-bit signed integers on both back ends; larger numbers are invalid input, not a fault.
MAX_ROW_ID = 2**63 - 1
RowId = Annotated[int, Field(ge=1, le=MAX_ROW_ID)]


def _as_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


#: A time a client sends, in UTC (naive means UTC). Times the API sends are UTC already: the
#: database column type (`db.models.UtcDateTime`) reads them back timezone-aware.
UtcDatetime = Annotated[datetime, AfterValidator(_as_utc)]


class RequestBody(BaseModel):
    """Base of every JSON request body: text fields must not carry NUL characters.

    PostgreSQL cannot store NUL in text and SQLite would keep it silently, so it
    is refused at the edge, the same on both back ends.
    """

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if isinstance(value, str) and "\x00" in value:
            raise ValueError("text must not contain NUL characters")
        return value


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable reason, e.g. not_found, invalid_image.")
    message: str = Field(description="What went wrong, for a person.")
    details: list[dict[str, Any]] | None = None
    request_id: str | None = Field(
        default=None, description="On 5xx answers: the request id to quote (also in X-Request-ID)."
    )


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- auth and accounts ---------------------------------------------------------


class LoginRequest(RequestBody):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=1000)


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: str
    active: bool
    must_change_password: bool = False
    created_at: datetime


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_at: datetime
    user: UserPublic


class Me(BaseModel):
    kind: Literal["user", "api_key"]
    name: str
    role: str | None
    scopes: list[str]
    permissions: list[str]
    #: a staff member who must change the password first (every other route answers 403 until then)
    must_change_password: bool = False


class PasswordChange(RequestBody):
    current_password: str = Field(min_length=1, max_length=1000)
    new_password: str = Field(min_length=8, max_length=1000)


class UserCreate(RequestBody):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=8, max_length=1000)
    role: Literal["admin", "staff", "viewer"] = "staff"


class ApiKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    prefix: str
    scopes: list[str]
    revoked: bool
    created_by: str
    created_at: datetime
    last_used_at: datetime | None


class ApiKeyCreate(RequestBody):
    name: str = Field(min_length=1, max_length=100)
    scopes: list[Literal["recognize", "enroll", "admin"]] = Field(min_length=1)


class ApiKeyIssued(ApiKeyPublic):
    key: str = Field(description="The key itself: shown once, only its hash is kept.")


# --- children ------------------------------------------------------------------------


class ChildCreate(RequestBody):
    external_id: str = Field(min_length=1, max_length=128, description="The other systems' id.")
    name: str = Field(min_length=1, max_length=200)
    group: str | None = Field(default=None, max_length=100)
    notes: str | None = Field(default=None, max_length=5000)
    consent_recorded_by: str | None = Field(default=None, max_length=200)
    consent_recorded_at: UtcDatetime | None = None


class ChildUpdate(RequestBody):
    external_id: str | None = Field(default=None, min_length=1, max_length=128)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    group: str | None = Field(default=None, max_length=100)
    notes: str | None = Field(default=None, max_length=5000)
    consent_recorded_by: str | None = Field(default=None, max_length=200)
    consent_recorded_at: UtcDatetime | None = None


class ChildPublic(BaseModel):
    id: int
    external_id: str
    name: str
    group: str | None
    status: Literal["active", "archived"]
    notes: str | None
    consent_recorded_by: str | None
    consent_recorded_at: datetime | None
    merged_into_id: int | None
    n_faces: int = Field(description="Enrolled faces (templates) of this child.")
    thumbnail_face_id: int | None = Field(
        default=None, description="The child's first enrolled face: its picture is /faces/{id}/thumbnail."
    )
    created_at: datetime
    updated_at: datetime


class ChildPage(BaseModel):
    items: list[ChildPublic]
    total: int
    limit: int
    offset: int


class PhotoAgePublic(BaseModel):
    """An active child and how old the photo of its newest searched template is."""

    child_id: int
    external_id: str
    name: str
    group: str | None
    newest_taken_at: datetime | None = Field(description="When the newest template's photo was taken.")
    newest_taken_at_source: Literal["exif", "upload"] | None = Field(
        description="exif: the camera's date; upload: the photo had none, so the upload time."
    )
    age_days: int | None = Field(description="Days since newest_taken_at.")
    n_templates: int = Field(description="Searched templates (retired ones not counted).")


class NeedsNewPhotos(BaseModel):
    stale_template_days: int = Field(description="A newest template older than this many days is stale.")
    as_of: datetime
    stale: list[PhotoAgePublic] = Field(
        description="Children whose newest template is stale: by group (none last), oldest photo first."
    )
    no_photos: list[PhotoAgePublic] = Field(description="Active children with no searched template.")


class EraseRequest(RequestBody):
    confirm: str = Field(description="Must be exactly 'ERASE': erasure cannot be undone.")


class ErasureResult(BaseModel):
    child_id: int
    external_id: str
    faces_deleted: int
    images_deleted: int
    files_deleted: int


class MergeRequest(RequestBody):
    source_id: RowId = Field(description="The duplicate child whose faces move here; it is archived.")


class MergeResult(BaseModel):
    child: ChildPublic
    merged_child: ChildPublic
    moved_face_ids: list[int]


# --- faces -----------------------------------------------------------------------------


class QualityPublic(BaseModel):
    score: float
    passed: bool
    reasons: list[str] = Field(description="too_small, blurred, profile, tilted, low_detector_score, ...")


class FacePublic(BaseModel):
    id: int
    child_id: int | None
    image_id: int
    box: list[float] = Field(description="x1, y1, x2, y2 in the photo's pixels")
    landmarks: list[list[float]]
    detector_score: float
    quality: QualityPublic
    review_state: Literal["enrolled", "pending_review", "rejected"]
    mask: bool | None
    arousal: float | None
    valence: float | None
    created_at: datetime
    thumbnail_url: str
    taken_at: datetime | None = Field(
        default=None,
        description="When the photo was taken: its EXIF date when plausible, else when it was uploaded "
        "(null where the answer does not carry the photo, e.g. after DELETE).",
    )
    taken_at_source: Literal["exif", "upload"] | None = Field(
        default=None, description="Where taken_at came from."
    )
    retired: bool = Field(
        default=False,
        description="Retired by the template policy (one of the child's oldest surplus templates): kept, "
        "not searched.",
    )
    retired_at: datetime | None = None


class ReassignRequest(RequestBody):
    child_id: RowId


# --- enrollment --------------------------------------------------------------------------


class DetectedFacePublic(BaseModel):
    box: list[float]
    landmarks: list[list[float]]
    detector_score: float
    quality: QualityPublic


class EnrolledFacePublic(DetectedFacePublic):
    index: int = Field(description="Position among the faces found in the photo.")
    enrolled: bool
    face_id: int | None = None
    refused_reasons: list[str] = []


class ConsistencyPublic(BaseModel):
    """Why a new face does not look like the child it is enrolled for (the consistency check)."""

    rule: Literal["closer_to_other_child", "far_from_child"] = Field(
        description="closer_to_other_child: another child's templates score higher than the child's own; "
        "far_from_child: the best own score is below `threshold`."
    )
    own_score: float = Field(description="Best cosine similarity against the child's own templates.")
    threshold: float = Field(description="review_threshold - consistency_margin.")
    other_child_id: int | None = Field(default=None, description="The best-scoring other child.")
    other_score: float | None = Field(default=None, description="Its best template's similarity.")


class PhotoResult(BaseModel):
    filename: str | None
    status: Literal["enrolled", "duplicate", "refused", "needs_confirmation"] = Field(
        description="needs_confirmation: nothing stored; the face does not look like the child's other "
        "photos (see `consistency`); send the photo again with confirm=true to enroll it anyway."
    )
    reasons: list[str] = Field(
        description="Why nothing was enrolled: invalid_image, no_face, several_faces_no_hint, "
        "hint_matches_no_face, duplicate_image, inconsistent_with_child, too_small, blurred, profile, ..."
    )
    message: str
    sha256: str | None = None
    image_id: int | None = None
    width: int | None = None
    height: int | None = None
    faces: list[EnrolledFacePublic] = []
    enrolled_face_id: int | None = None
    consistency: ConsistencyPublic | None = Field(
        default=None,
        description="The consistency check's scores when the face failed it (needs_confirmation, or "
        "enrolled with confirm=true).",
    )


class EnrollResponse(BaseModel):
    child_id: int
    enrolled: int = Field(description="How many photos gave a new template.")
    photos: list[PhotoResult]


# --- recognition ---------------------------------------------------------------------------


class Candidate(BaseModel):
    child_id: int
    external_id: str
    name: str
    score: float = Field(description="Cosine similarity of the best matching template, -1..1.")
    face_id: int | None = Field(default=None, description="The best matching enrolled face.")


#: what the `reasons` of a decision may hold (docs/recognition.md, "Reasons")
DECISION_REASONS = (
    "Why the decision is not a match (empty for a match): below_accept, small_margin, sibling, twin, "
    "several_candidates (review); below_review, no_templates (unknown); quality:<check> (the face failed "
    "the quality gate, e.g. quality:blurred, quality:too_small: never matched automatically)."
)


class RecognizedFace(DetectedFacePublic):
    decision: Decision
    reasons: list[str] = Field(default=[], description=DECISION_REASONS)
    candidates: list[Candidate] = Field(description="Best first.")
    review_id: int | None = Field(default=None, description="Review-queue item when decision is review.")
    review_queued: bool | None = Field(
        default=None, description="Decision review: whether the face waits in the review queue (else null)."
    )
    review_not_queued_reason: Literal[
        "not_requested", "already_enrolled", "already_decided", "candidates_erased"
    ] | None = Field(
        default=None,
        description="Why a face with decision review was not queued: queue_review was false, this face "
        "of this photo is already on record (an enrolled template, or a review already decided), or every "
        "child it was proposed for was erased meanwhile.",
    )


class RecognizeResponse(BaseModel):
    width: int
    height: int
    model_id: str
    faces: list[RecognizedFace]


class DetectResponse(BaseModel):
    width: int
    height: int
    faces: list[DetectedFacePublic]


class VerifyResponse(BaseModel):
    decision: Decision
    score: float | None = Field(description="Cosine similarity; null when a photo has no face.")
    child_id: int | None = None
    face: DetectedFacePublic | None = None
    other_face: DetectedFacePublic | None = None
    reasons: list[str] = Field(
        default=[],
        description=DECISION_REASONS + " Also no_face, no_face_in_second_photo, child_has_no_templates.",
    )


# --- review ---------------------------------------------------------------------------------


class ReviewCandidate(BaseModel):
    child_id: int
    score: float
    external_id: str | None = None
    name: str | None = None


class ReviewSource(BaseModel):
    """Who sent the photo that queued the item, and when (from its `review.queued` audit event)."""

    at: datetime
    actor: str = Field(description="e.g. user:anna, api_key:door")
    kind: Literal["user", "api_key", "system"]
    name: str


class ReviewItemPublic(BaseModel):
    id: int
    status: Literal["open", "resolved"]
    face: FacePublic
    image_width: int
    image_height: int
    source: ReviewSource | None = Field(description="Null when its audit event is gone (erasure).")
    candidates: list[ReviewCandidate]
    reasons: list[str] = Field(
        default=[], description="Why recognition sent the face to review (the `reasons` of its decision)."
    )
    resolution: str | None
    resolved_by: str | None
    resolved_at: datetime | None
    created_at: datetime


class ReviewPage(BaseModel):
    items: list[ReviewItemPublic]
    total: int
    limit: int
    offset: int


class ResolveRequest(RequestBody):
    action: Literal["confirm", "assign", "new_child", "dismiss"] = Field(
        description="confirm: the best candidate; assign: `child_id`; new_child: create `new_child`; "
        "dismiss: nobody enrolled."
    )
    child_id: RowId | None = None
    new_child: ChildCreate | None = None
    add_as_template: bool | None = Field(
        default=None,
        description="true: enroll the face as a new template if it passes the quality gate; false: never; "
        "null (default): the template policy decides (setting auto_templates: under 'confirmed' or "
        "'confident' the face becomes a template unless it is a near-duplicate of one, a marked sibling "
        "or twin scores too close, or the child's template cap cannot make room).",
    )


class ResolveResponse(BaseModel):
    review: ReviewItemPublic
    child: ChildPublic | None
    template_added: bool
    template_refused_reasons: list[str]


class DuplicateSide(BaseModel):
    child_id: int
    external_id: str
    name: str
    face_id: int


class DuplicatePair(BaseModel):
    a: DuplicateSide
    b: DuplicateSide
    score: float
    suspect_face_id: int | None = Field(
        default=None,
        description="Set when one face alone makes the pair (it looks like the other child while its own "
        "child's other faces do not): move that face (POST /faces/{id}/reassign) instead of merging.",
    )
    suspect_child_id: int | None = Field(default=None, description="The child the suspect face is in now.")


class DismissRequest(RequestBody):
    child_a_id: RowId
    child_b_id: RowId


class DismissalPublic(BaseModel):
    child_a_id: int = Field(description="The smaller of the two child ids.")
    child_b_id: int
    dismissed_by: str
    dismissed_at: datetime


class DuplicatesResponse(BaseModel):
    threshold: float
    pairs: list[DuplicatePair]


# --- audit -----------------------------------------------------------------------------------


class AuditEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    seq: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str | None
    child_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    face_ids: list[int] | None
    undoable: bool = Field(
        default=False,
        description="Whether `POST /audit/{seq}/undo` would likely be accepted (a hint: the undo decides).",
    )


class AuditPage(BaseModel):
    items: list[AuditEventPublic]
    total: int
    limit: int
    offset: int


# --- admin and health ----------------------------------------------------------------------------


class SettingsView(BaseModel):
    model_id: str
    embedder: str
    embedding_dim: int
    detector: str
    device: str
    accept_threshold: float
    review_threshold: float
    match_margin: float
    top_k: int
    quality: dict[str, float]
    max_upload_bytes: int
    max_image_pixels: int
    gallery_faces: int | None
    index_watermark: int | None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    #: tells a readiness check that this port answers childface and not another program
    service: Literal["childface"] = "childface"
    version: str
    ready: bool
    checks: dict[str, str]
    #: problems that do not make the server unready, e.g. "integrity: 2 corrupt embedding(s), ..."
    warnings: list[str] = Field(default_factory=list)
