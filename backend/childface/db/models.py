"""Relational model: the source of truth (DESIGN.md invariant 1).

Children, the photos they were enrolled from, the faces found in those photos,
each face's embeddings (tagged with the model that made them), the append-only
audit trail that doubles as the vector index's change feed, staff accounts,
their sessions and API keys, the recognition review queue and import runs.
"""

from __future__ import annotations

import enum
import hashlib
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# SQLite only auto-increments INTEGER PRIMARY KEY; Postgres gets a 64-bit identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """The same instant in UTC; a naive time is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    PostgreSQL keeps the offset (timestamptz); SQLite keeps none and hands back
    naive values. Normalising here, in the one column type, spares every
    reader a naive/aware check and keeps SQLite's text comparisons in UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


#: SQLite reuses the highest rowid after a delete unless the table says AUTOINCREMENT; ids that the
#: audit or the API refer to must never come back (an erased child's id on a new child), so every
#: table with a surrogate id carries it. PostgreSQL identities never go back anyway.
NO_ID_REUSE = {"sqlite_autoincrement": True}


def at_most_one(name: str, column: str, value: str) -> Index:
    """A partial unique index: at most one row of the table has `column == value` (on both back ends)."""
    where = text(f"{column} = '{value}'")
    return Index(name, column, unique=True, sqlite_where=where, postgresql_where=where)


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Store the readable value, checked by a CHECK constraint rather than a native PG enum,
    # so adding a member later is a plain migration on both back ends.
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda members: [m.value for m in members],
    )


class ChildStatus(enum.StrEnum):
    active = "active"
    archived = "archived"


class ImageSource(enum.StrEnum):
    admin_upload = "admin_upload"
    api = "api"
    csv_import = "csv_import"
    recognition = "recognition"


class ReviewState(enum.StrEnum):
    enrolled = "enrolled"
    pending_review = "pending_review"
    rejected = "rejected"


class Role(enum.StrEnum):
    admin = "admin"
    staff = "staff"
    viewer = "viewer"


class ReviewStatus(enum.StrEnum):
    open = "open"
    resolved = "resolved"


class ImportStatus(enum.StrEnum):
    running = "running"
    finished = "finished"
    failed = "failed"


class Child(Base):
    __tablename__ = "children"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(128), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    group_name: Mapped[str | None] = mapped_column(String(100), index=True)
    status: Mapped[ChildStatus] = mapped_column(
        _enum(ChildStatus, "child_status"), default=ChildStatus.active, index=True
    )
    notes: Mapped[str | None] = mapped_column(Text)
    consent_recorded_by: Mapped[str | None] = mapped_column(String(200))
    consent_recorded_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("children.id", ondelete="SET NULL"))
    #: when the child was last archived (retention counts from here); None while active
    archived_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)

    faces: Mapped[list[Face]] = relationship(back_populates="child")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(String(500))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    source: Mapped[ImageSource] = mapped_column(_enum(ImageSource, "image_source"))
    uploaded_by: Mapped[str] = mapped_column(String(200))
    #: when the photo was taken: EXIF DateTimeOriginal when present and plausible, else the upload time
    taken_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: "exif" | "upload": where `taken_at` came from
    taken_at_source: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    faces: Mapped[list[Face]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )


class Face(Base):
    __tablename__ = "faces"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    child_id: Mapped[int | None] = mapped_column(ForeignKey("children.id", ondelete="SET NULL"), index=True)
    # box in original image pixels: x1, y1, x2, y2
    box_x1: Mapped[float] = mapped_column(Float)
    box_y1: Mapped[float] = mapped_column(Float)
    box_x2: Mapped[float] = mapped_column(Float)
    box_y2: Mapped[float] = mapped_column(Float)
    #: five [x, y] points: image-left eye, image-right eye, nose, left and right mouth corners
    landmarks: Mapped[list[list[float]]] = mapped_column(JSON)
    detector_score: Mapped[float] = mapped_column(Float)
    quality_score: Mapped[float] = mapped_column(Float)
    #: the quality gate's full verdict (size, sharpness, pose, reasons)
    quality_details: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    mask: Mapped[bool | None] = mapped_column(Boolean)
    arousal: Mapped[float | None] = mapped_column(Float)
    valence: Mapped[float | None] = mapped_column(Float)
    review_state: Mapped[ReviewState] = mapped_column(
        _enum(ReviewState, "review_state"), default=ReviewState.enrolled, index=True
    )
    #: set when the template policy retired this template (surplus, oldest first): kept, not searched
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    image: Mapped[Image] = relationship(back_populates="faces")
    child: Mapped[Child | None] = relationship(back_populates="faces")
    embeddings: Mapped[list[Embedding]] = relationship(
        back_populates="face", cascade="all, delete-orphan", passive_deletes=True
    )

    @property
    def box(self) -> list[float]:
        return [self.box_x1, self.box_y1, self.box_x2, self.box_y2]


class ModelState(enum.StrEnum):
    #: the model recognitions use; at most one row (a partial unique index says so)
    current = "current"
    #: embeddings exist or are being computed, not searched by recognitions
    available = "available"


class EmbeddingModel(Base):
    """One embedding space: vectors of different models are never searched together.

    `spec` says how to load the embedder again in any process (`{"embedder", "weights",
    "arch", "flip"}`), so a model made current by `switch-model` is followed by every
    API process without a restart.
    """

    __tablename__ = "embedding_models"
    __table_args__ = (
        at_most_one("uq_embedding_models_one_current", "state", "current"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    #: the embedder's model_id: name + weights hash prefix
    key: Mapped[str] = mapped_column(String(200), unique=True)
    name: Mapped[str] = mapped_column(String(100))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    dim: Mapped[int] = mapped_column(Integer)
    #: how to load this embedder: {"embedder": str, "weights": str | None, "arch": str, "flip": bool}
    spec: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=ModelState.available, server_default="available")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


def embedding_checksum(model_id: int, vector: bytes) -> str:
    """sha256 over an embedding's model row id and its vector bytes (the `embeddings.checksum` column).

    Detects a vector changed on disk or in the database, and a row moved to another model.
    """
    return hashlib.sha256(b"%d:" % model_id + bytes(vector)).hexdigest()


class Embedding(Base):
    __tablename__ = "embeddings"
    __table_args__ = (
        UniqueConstraint("face_id", "model_id", name="uq_embeddings_face_model"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("embedding_models.id", ondelete="RESTRICT"), index=True)
    #: float32 little-endian, L2-normalised, `dim` values
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    #: `embedding_checksum(model_id, vector)`; checked by `verify` and at start-up
    checksum: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)

    face: Mapped[Face] = relationship(back_populates="embeddings")
    model: Mapped[EmbeddingModel] = relationship()

    @classmethod
    def of(cls, *, face_id: int, model_id: int, vector: bytes) -> Embedding:
        """A row with its checksum filled in: every writer of embeddings goes through here
        (or `embedding_checksum` on bulk paths)."""
        checksum = embedding_checksum(model_id, vector)
        return cls(face_id=face_id, model_id=model_id, vector=vector, checksum=checksum)


class AuditEvent(Base):
    """Append-only record of every identity mutation, and the index's change feed.

    `face_ids` lists the faces whose indexable state the event may have changed;
    an index catching up re-reads exactly those faces from the DB.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_target", "target_type", "target_id"),
        Index("ix_audit_events_at", "at"),
        NO_ID_REUSE,
    )

    seq: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str] = mapped_column(String(32))
    target_id: Mapped[str | None] = mapped_column(String(64))
    #: the child the event concerns, for per-child history (kept after erasure as a tombstone)
    child_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    face_ids: Mapped[list[int] | None] = mapped_column(JSON)


class AuditEventChild(Base):
    """Which children an audit event concerns (its `child_id` and any other: merge source, old owner
    of a reassigned face, children of an import batch), so a child's history is one indexed query."""

    __tablename__ = "audit_event_children"

    seq: Mapped[int] = mapped_column(
        ForeignKey("audit_events.seq", ondelete="CASCADE"), primary_key=True
    )
    child_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, index=True)


class User(Base):
    __tablename__ = "users"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(200))
    role: Mapped[Role] = mapped_column(_enum(Role, "user_role"))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    #: set for a new first-start admin and after an admin resets the password: change it at sign-in
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class StaffSession(Base):
    """A signed-in staff member's bearer token (only its hash is stored)."""

    __tablename__ = "staff_sessions"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())

    user: Mapped[User] = relationship()


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    #: first characters of the key, shown in listings so staff can tell keys apart
    prefix: Mapped[str] = mapped_column(String(16))
    #: sha256 of the whole key: keys are 256-bit random, so a fast hash is safe
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSON)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class ReviewItem(Base):
    """A recognition that ended in `review`: a person decides who the face is."""

    __tablename__ = "review_items"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    face_id: Mapped[int] = mapped_column(ForeignKey("faces.id", ondelete="CASCADE"), index=True)
    #: the candidates recognition proposed: [{child_id, score}], best first
    candidates: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    status: Mapped[ReviewStatus] = mapped_column(
        _enum(ReviewStatus, "review_status"), default=ReviewStatus.open, index=True
    )
    resolution: Mapped[str | None] = mapped_column(String(32))
    resolved_by: Mapped[str | None] = mapped_column(String(200))
    resolved_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: why recognition sent the face to review: codes such as "below_accept", "small_margin", "sibling"
    reasons: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ImportRun(Base):
    """One CSV import. At most one runs at a time in a deployment (a partial unique index says so)."""

    __tablename__ = "import_runs"
    __table_args__ = (
        at_most_one("uq_import_runs_one_running", "status", "running"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source_name: Mapped[str] = mapped_column(String(500))
    status: Mapped[ImportStatus] = mapped_column(
        _enum(ImportStatus, "import_status"), default=ImportStatus.running
    )
    started_by: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: {"imported": n, "duplicate": n, "refused": n, "rows": n}
    counts: Mapped[dict[str, int] | None] = mapped_column(JSON)
    report_path: Mapped[str | None] = mapped_column(String(500))
    #: the running process renews it; a `running` run whose heartbeat stopped was interrupted (crash)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: the importing process ("host:pid"), so a restart on the same host can tell it died
    owner: Mapped[str | None] = mapped_column(String(200))
    #: why a run failed or was interrupted, for people
    error: Mapped[str | None] = mapped_column(Text)


class FileDeletion(Base):
    """A media file whose last row went: written in the deleting transaction, removed once swept.

    The journal makes file deletion durable: a crash after the commit leaves the
    entry, and the next sweep (after each commit, at start-up, periodically)
    deletes the file unless a row took it back meanwhile.
    """

    __tablename__ = "file_deletions"
    __table_args__ = NO_ID_REUSE

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(String(500))
    #: 'removed': its last row went; 'pending_write': written before the commit that will refer to it
    reason: Mapped[str] = mapped_column(String(16), default="removed")
    #: the writing process ("host:pid") of a pending write: a dead owner's file is swept at once
    owner: Mapped[str | None] = mapped_column(String(200))
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class LoginThrottle(Base):
    """Failed sign-ins per client address, and per client address and account name.

    `key` is a sha256 (of "addr:<address>" or "acct:<address>:<username>"), so
    names typed at the sign-in form (which may be mistyped passwords) are not
    stored. Counted with one atomic upsert per failure, shared by every API process.
    """

    __tablename__ = "login_throttles"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    blocked_until: Mapped[datetime | None] = mapped_column(UtcDateTime())


class DuplicateDismissal(Base):
    """Staff said two children are not the same child: the pair leaves the duplicates report for good.

    Stored with the smaller child id first; goes with either child (erasure).
    """

    __tablename__ = "duplicate_dismissals"
    __table_args__ = (
        UniqueConstraint("child_a_id", "child_b_id", name="uq_duplicate_dismissals_pair"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    child_a_id: Mapped[int] = mapped_column(ForeignKey("children.id", ondelete="CASCADE"), index=True)
    child_b_id: Mapped[int] = mapped_column(ForeignKey("children.id", ondelete="CASCADE"), index=True)
    dismissed_by: Mapped[str] = mapped_column(String(200))
    dismissed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class RuntimeSetting(Base):
    """A setting an admin changed at run time (thresholds): overrides the process's Settings value.

    Every API process reads these when the audit feed shows a `settings.changed` event.
    """

    __tablename__ = "runtime_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


# ---- video: sightings, arrivals, cameras, webhook outbox (`childface watch`) -------------------------


class SightingDecision(enum.StrEnum):
    match = "match"
    review = "review"
    unknown = "unknown"


class CameraState(enum.StrEnum):
    starting = "starting"
    running = "running"
    reconnecting = "reconnecting"
    stopped = "stopped"
    error = "error"


class Sighting(Base):
    """One track of one face at one video source: who (or unknown), how sure, when, its best crop.

    Upserted by (source, track_id) while the track lives; `final` once it ended.
    `child_id` is the matched child (decision match) or the leading candidate
    (review); never set for unknown people. Erasure of a child keeps the row (the
    count) without child, score, crop or review face.
    """

    __tablename__ = "sightings"
    __table_args__ = (
        UniqueConstraint("source", "track_id", name="uq_sightings_source_track"),
        Index("ix_sightings_first_seen", "first_seen"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    source: Mapped[str] = mapped_column(String(100))
    track_id: Mapped[str] = mapped_column(String(64))
    child_id: Mapped[int | None] = mapped_column(ForeignKey("children.id", ondelete="SET NULL"), index=True)
    decision: Mapped[SightingDecision] = mapped_column(_enum(SightingDecision, "sighting_decision"))
    score: Mapped[float | None] = mapped_column(Float)
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    frames: Mapped[int] = mapped_column(Integer)
    #: media-relative path of the private JPEG crop (an `images` row, source `recognition`)
    best_crop_path: Mapped[str | None] = mapped_column(String(500))
    #: the review-queue face of a review track
    face_id: Mapped[int | None] = mapped_column(ForeignKey("faces.id", ondelete="SET NULL"), index=True)
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, onupdate=utcnow)


class Arrival(Base):
    """A child's first confident match of a day (local day in `attendance_timezone`), at any source.

    UNIQUE(child_id, day): two processes, or a restarted one, cannot record a second arrival.
    """

    __tablename__ = "arrivals"
    __table_args__ = (
        UniqueConstraint("child_id", "day", name="uq_arrivals_child_day"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    child_id: Mapped[int] = mapped_column(ForeignKey("children.id", ondelete="CASCADE"), index=True)
    day: Mapped[date] = mapped_column(Date, index=True)
    source: Mapped[str] = mapped_column(String(100))
    sighting_id: Mapped[int | None] = mapped_column(ForeignKey("sightings.id", ondelete="SET NULL"))
    arrived_at: Mapped[datetime] = mapped_column(UtcDateTime())


class CameraStatus(Base):
    """A video source's heartbeat, and the latest annotated frame when someone asked for one."""

    __tablename__ = "camera_status"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    #: "file" | "webcam" | "stream"
    uri_kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[CameraState] = mapped_column(_enum(CameraState, "camera_state"))
    fps: Mapped[float | None] = mapped_column(Float)
    faces_per_s: Mapped[float | None] = mapped_column(Float)
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    frame_requested_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: written only on request; dropped once served or when older than a minute
    frame_jpeg: Mapped[bytes | None] = mapped_column(LargeBinary)
    frame_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class WebhookDelivery(Base):
    """The outbox: one event for one webhook URL, written in the transaction of what it announces.

    `child_id` ties an event about a child to it: erasing the child deletes its
    events, delivered or not (their payloads name the child).
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2000))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    child_id: Mapped[int | None] = mapped_column(ForeignKey("children.id", ondelete="CASCADE"), index=True)
    #: "pending" | "delivered" | "failed"
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


# ---- data lifecycle and identity care -----------------------------------------------------------------


class ReembedJob(Base):
    """Computing a new model's embedding for every enrolled face (`childface reembed`).

    Progress is the DB itself: a face is done when it has an embedding of `model_id`,
    so a run killed at any point resumes where it stopped. At most one runs at a time.
    """

    __tablename__ = "reembed_jobs"
    __table_args__ = (
        at_most_one("uq_reembed_jobs_one_running", "status", "running"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("embedding_models.id", ondelete="CASCADE"), index=True)
    #: "running" | "finished" | "failed" | "cancelled"
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_by: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    #: the running process ("host:pid")
    owner: Mapped[str | None] = mapped_column(String(200))
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    #: faces whose photo is missing or has no face any more: listed in `error`
    failed: Mapped[int] = mapped_column(Integer, default=0)
    faces_per_s: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)


class RemovedFace(Base):
    """A face staff removed, kept so the removal can be undone (`POST /audit/{seq}/undo`).

    The face row and its embeddings are deleted (the face leaves every query) and
    their columns are kept in `payload`; the photo's `images` row stays while a
    removed face refers to it. Purged after `removed_faces_keep_days`, and at once
    when the child is erased.
    """

    __tablename__ = "removed_faces"

    face_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    child_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    #: the audit event of the removal
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    #: the face's columns and its embeddings ({"face": {...}, "embeddings": [{model_id, vector_b64, ...}]})
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    removed_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow, index=True)


class RelationKind(enum.StrEnum):
    sibling = "sibling"
    twin = "twin"


class ChildRelation(Base):
    """Two children staff marked as siblings or twins (smaller id first); goes with either child."""

    __tablename__ = "child_relations"
    __table_args__ = (
        UniqueConstraint("child_a_id", "child_b_id", name="uq_child_relations_pair"),
        NO_ID_REUSE,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    child_a_id: Mapped[int] = mapped_column(ForeignKey("children.id", ondelete="CASCADE"), index=True)
    child_b_id: Mapped[int] = mapped_column(ForeignKey("children.id", ondelete="CASCADE"), index=True)
    kind: Mapped[RelationKind] = mapped_column(_enum(RelationKind, "relation_kind"))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
