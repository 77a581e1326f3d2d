"""Which embedding model a deployment serves, how any process loads it, and moving to another one.

The current model
-----------------
Each `embedding_models` row is one embedding space (key = the embedder's `model_id`,
"<name>:<weights sha256[:16]>"). The row with state "current" (at most one: a
partial unique index) is the model every recognition, enrollment and import uses,
in every process. Its `spec` says how to load it anywhere:

    {"embedder": "dlib-resnet" | "arcface", "weights": absolute path | None,
     "arch": "r50", "flip": bool, "thresholds": {"accept_threshold": x, "review_threshold": y}?}

(`spec_from_settings`, `settings_for_spec`). `thresholds`, when present, are the
model's own calibrated decision thresholds: they replace the configured ones
while the model is current (run-time overrides an admin sets still win).

First start of a deployment (no current row, `establish_current`): the configured
model becomes current when it has embeddings or no model has any; otherwise (an
upgrade changed the configured default, e.g. flip test-time augmentation) the model
with the most embeddings stays current, and `configured_note` tells how to move:
`childface reembed`, then `childface switch-model KEY`. Rows made before specs were
recorded get theirs back when the key is what the configured settings, with flip on
or off, produce; a model whose spec cannot be known is reported and not made current.

Moving (`switch_model`, `drop_model`)
-------------------------------------
`switch_model` refuses unless the target has an embedding of every enrolled face
whose photo is still stored (a few missing ones are computed first when the caller
can); then ONE unit of work makes the old current row "available" and the target
"current", with ONE audit event `model.switched` (before/after keys). No face ids
are listed: every process rebuilds its serving gallery when the event reaches it
(services/runtime.py). The old model's embeddings stay, so switching back is
instant, until `drop_model` deletes them in batches (one `model.dropped` event per
batch, listing the faces) with the model row and its index snapshot.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import delete, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from childface.config import Settings
from childface.db.models import (
    AuditEvent,
    Embedding,
    EmbeddingModel,
    Face,
    Image,
    ModelState,
    ReembedJob,
    ReviewState,
    RuntimeSetting,
)
from childface.db.session import Actor, Database
from childface.services.errors import Conflict, InvalidInput, NotFound
from childface.services.media import MediaStore

log = logging.getLogger(__name__)

MODEL_SWITCHED = "model.switched"
MODEL_DROPPED = "model.dropped"
MODEL_THRESHOLDS = "model.thresholds"
#: audit actions after which every process re-reads the current model (and its thresholds)
FOLLOWED_ACTIONS = (MODEL_SWITCHED, MODEL_THRESHOLDS)
#: the thresholds a model may carry, as Settings names
THRESHOLD_KEYS = ("accept_threshold", "review_threshold")
#: missing embeddings `switch_model` computes itself (more: run `childface reembed` again)
TOP_UP_MAX = 200
#: embeddings deleted per unit of work when a model is dropped
DROP_BATCH = 2000
#: PostgreSQL advisory lock: one switch at a time
_LOCK_KEY = zlib.crc32(b"childface.embedding_models") - 2**31


class ModelUnavailable(RuntimeError):
    """A model this process should serve cannot be loaded here (no spec, weights missing or changed)."""


# ---- specs ------------------------------------------------------------------------------------


def spec_from_settings(settings: Settings) -> dict[str, Any]:
    """How to load the embedder `settings` configure, in any process (weights as an absolute path)."""
    weights = settings.embedder_weights
    return {
        "embedder": settings.embedder,
        "weights": None if weights is None else str(Path(weights).expanduser().resolve()),
        "arch": settings.embedder_arch,
        "flip": bool(settings.embedder_flip_tta),
    }


def settings_for_spec(settings: Settings, spec: dict[str, Any]) -> Settings:
    """`settings` with the embedder of `spec` (everything else, device included, stays)."""
    weights = spec.get("weights")
    return settings.model_copy(
        update={
            "embedder": spec["embedder"],
            "embedder_weights": None if weights is None else Path(weights),
            "embedder_arch": spec.get("arch") or "r50",
            "embedder_flip_tta": bool(spec.get("flip", False)),
        }
    )


def same_embedder(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two specs load the same embedder (arch counts only for a .pth/.pt checkpoint)."""
    if a is None or b is None:
        return False
    if (a.get("embedder"), a.get("weights"), bool(a.get("flip"))) != (
        b.get("embedder"), b.get("weights"), bool(b.get("flip"))
    ):
        return False
    checkpoint = str(a.get("weights") or "").lower().endswith((".pth", ".pt"))
    return not checkpoint or a.get("arch") == b.get("arch")


def model_thresholds(spec: dict[str, Any] | None) -> dict[str, float]:
    """The decision thresholds a model carries ({} when none)."""
    stored = (spec or {}).get("thresholds") or {}
    return {k: float(stored[k]) for k in THRESHOLD_KEYS if stored.get(k) is not None}


def public_spec(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """A spec to show: the weights file's name only (not where the server keeps it)."""
    if spec is None:
        return None
    weights = spec.get("weights")
    return {
        "embedder": spec.get("embedder"),
        "weights": None if weights is None else Path(weights).name,
        "arch": spec.get("arch"),
        "flip": bool(spec.get("flip")),
        "thresholds": model_thresholds(spec) or None,
    }


def check_thresholds(accept: float | None, review: float | None) -> dict[str, float]:
    """--accept/--review as thresholds to store: both or neither, -1..1, review <= accept."""
    if accept is None and review is None:
        return {}
    if accept is None or review is None:
        raise InvalidInput("give both thresholds (accept and review), or neither", code="invalid_thresholds")
    for name, value in (("accept", accept), ("review", review)):
        if not -1.0 <= value <= 1.0:
            raise InvalidInput(f"the {name} threshold must be between -1 and 1", code="invalid_thresholds")
    if review > accept:
        raise InvalidInput(
            f"the review threshold ({review}) must not be above the accept threshold ({accept})",
            code="invalid_thresholds",
        )
    return {"accept_threshold": float(accept), "review_threshold": float(review)}


# ---- reading the model rows ---------------------------------------------------------------------


def current_row(session: Session) -> EmbeddingModel | None:
    return session.scalar(select(EmbeddingModel).where(EmbeddingModel.state == ModelState.current))


def model_row(session: Session, key: str) -> EmbeddingModel:
    row = session.scalar(select(EmbeddingModel).where(EmbeddingModel.key == key))
    if row is None:
        raise NotFound(f"no embedding model {key!r} (see `childface models` or GET /models)", code="no_model")
    return row


def _counts(session: Session) -> dict[int, int]:
    """Embeddings per model row id."""
    return dict(session.execute(select(Embedding.model_id, func.count()).group_by(Embedding.model_id)).all())


def _enrolled() -> Any:
    return Face.review_state == ReviewState.enrolled


@dataclass(frozen=True)
class ModelInfo:
    id: int
    key: str
    name: str
    dim: int
    state: str
    spec: dict[str, Any] | None
    created_at: datetime
    #: embeddings stored for this model (every face state)
    embeddings: int
    #: enrolled faces with an embedding of this model, of `enrolled_faces`
    covered: int
    enrolled_faces: int

    @property
    def coverage(self) -> float:
        return 1.0 if self.enrolled_faces == 0 else self.covered / self.enrolled_faces

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key, "name": self.name, "dim": self.dim, "state": self.state,
            "embeddings": self.embeddings, "covered_faces": self.covered,
            "enrolled_faces": self.enrolled_faces,
            "coverage": round(self.coverage, 4), "spec": public_spec(self.spec),
            "created_at": self.created_at.isoformat(),
        }


def list_models(db: Database) -> list[ModelInfo]:
    """Every registered model, the current one first, with its embeddings and coverage of enrolled faces."""
    with db.session() as session:
        rows = session.scalars(select(EmbeddingModel).order_by(EmbeddingModel.id)).all()
        counts = _counts(session)
        covered = dict(
            session.execute(
                select(Embedding.model_id, func.count())
                .join(Face, Face.id == Embedding.face_id)
                .where(_enrolled())
                .group_by(Embedding.model_id)
            ).all()
        )
        enrolled = session.scalar(select(func.count()).select_from(Face).where(_enrolled())) or 0
        models = [
            ModelInfo(r.id, r.key, r.name, r.dim, r.state, r.spec, r.created_at, counts.get(r.id, 0),
                      covered.get(r.id, 0), enrolled)
            for r in rows
        ]
    return sorted(models, key=lambda m: (m.state != ModelState.current, m.id))


# ---- first start ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """A loaded embedder's identity, as stored in `embedding_models`."""

    key: str
    name: str
    weights_sha256: str
    dim: int


@dataclass(frozen=True)
class CurrentChoice:
    #: the current model's key; None when none could be made current (see `problem`)
    key: str | None
    #: why no model could be made current
    problem: str | None = None


def establish_current(
    db: Database,
    *,
    configured: Identity,
    configured_spec: dict[str, Any],
    reconstruct: Callable[[str], dict[str, Any] | None],
) -> CurrentChoice:
    """Decide the current model of a deployment that has none yet (see the module docstring).

    `reconstruct(key)` returns the spec of a row stored without one, when the
    configured settings (flip on or off) produce that key, else None. Safe under
    concurrent starts: a process that loses the race on the one-current index
    reads the winner's choice.
    """
    for _ in range(2):
        try:
            with db.transaction() as session:
                row = current_row(session)
                if row is not None:
                    return CurrentChoice(row.key)
                counts = _counts(session)
                rows = {r.key: r for r in session.scalars(select(EmbeddingModel))}
                mine = rows.get(configured.key)
                if sum(counts.values()) == 0 or (mine is not None and counts.get(mine.id, 0) > 0):
                    if mine is None:
                        mine = EmbeddingModel(key=configured.key, name=configured.name,
                                              weights_sha256=configured.weights_sha256, dim=configured.dim)
                        session.add(mine)
                    mine.spec = mine.spec or configured_spec
                    mine.state = ModelState.current
                    return CurrentChoice(configured.key)
                best = max((r for r in rows.values() if counts.get(r.id)), key=lambda r: counts[r.id])
                spec = best.spec or reconstruct(best.key)
                if spec is None:
                    return CurrentChoice(None, problem=(
                        f"the enrolled faces have embeddings of model {best.key} ({counts[best.id]}), whose "
                        f"weights are not known here, and none of the configured model {configured.key}: "
                        "compute them with `childface reembed`, then `childface switch-model "
                        f"{configured.key}`; until then nobody is recognised"
                    ))
                best.spec = spec
                best.state = ModelState.current
                return CurrentChoice(best.key)
        except IntegrityError:
            continue  # another process made a model current first: read its choice
    raise RuntimeError("could not decide the current embedding model")


def configured_note(current_key: str, current_spec: dict[str, Any] | None, settings: Settings) -> str | None:
    """What to say when the configured embedder is not the current model (None when it is)."""
    configured = spec_from_settings(settings)
    if current_spec is None or same_embedder(current_spec, configured):
        return None
    described = configured["embedder"] + ("+flip" if configured["flip"] else "") + (
        f" ({Path(configured['weights']).name})" if configured["weights"] else ""
    )
    return (
        f"the configured embedder {described} is not the current model {current_key}; to move to it: "
        "`childface reembed` (computes its embeddings while recognition goes on), then "
        "`childface switch-model KEY` with the key it prints"
    )


# ---- switching ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Missing:
    """Enrolled faces without an embedding of a model: those whose photo is stored, and those whose is not."""

    with_photo: list[int]
    without_photo: list[int]


def missing_faces(db: Database, media: MediaStore, model_id: int) -> Missing:
    """Enrolled faces that have no embedding of `model_id`, split by whether their photo file exists."""
    with db.session() as session:
        rows = session.execute(
            select(Face.id, Image.path)
            .join(Image, Image.id == Face.image_id)
            .where(_enrolled(), _lacks(model_id))
            .order_by(Face.id)
        ).all()
    with_photo, without = [], []
    for face_id, path in rows:
        (with_photo if media.absolute(path).is_file() else without).append(face_id)
    return Missing(with_photo, without)


def _lacks(model_id: int) -> Any:
    return ~exists().where(Embedding.face_id == Face.id, Embedding.model_id == model_id)


@dataclass(frozen=True)
class SwitchResult:
    before: str | None
    after: str
    thresholds: dict[str, float]
    #: embeddings computed before the switch (the target lacked them)
    topped_up: int
    #: enrolled faces left without an embedding of the target because their photo is gone
    without_photo: list[int]
    #: run-time threshold overrides removed (the target carries its own thresholds)
    overrides_removed: dict[str, Any]


def switch_model(
    db: Database,
    media: MediaStore,
    actor: Actor,
    key: str,
    *,
    accept: float | None = None,
    review: float | None = None,
    top_up: Callable[[Sequence[int]], None] | None = None,
) -> SwitchResult:
    """Make `key` the current model (module docstring); `accept`/`review` are stored as its thresholds.

    `top_up(face_ids)` computes missing embeddings of the target (at most TOP_UP_MAX
    faces); without it, or with more missing, the switch is refused (Conflict
    `model_incomplete`) naming how many faces lack an embedding. Nothing changes then.
    """
    thresholds = check_thresholds(accept, review)
    with db.session() as session:
        target = model_row(session, key)
        target_id, spec, state = target.id, target.spec, target.state
    if spec is None:
        raise Conflict(
            f"model {key} has no loading spec, so other processes could not load it; compute its embeddings "
            "with `childface reembed` (which records it) first",
            code="model_unloadable",
        )
    if state == ModelState.current and not thresholds:
        raise Conflict(f"model {key} is already the current model", code="already_current")
    missing = missing_faces(db, media, target_id)
    topped_up = 0
    if missing.with_photo and top_up is not None and len(missing.with_photo) <= TOP_UP_MAX:
        top_up(missing.with_photo)
        topped_up = len(missing.with_photo)
        missing = missing_faces(db, media, target_id)
    if missing.with_photo:
        _refuse_incomplete(key, missing.with_photo)
    removed: dict[str, Any] = {}
    with db.unit_of_work(actor) as uow:
        session = uow.session
        if not db.is_sqlite:
            session.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
        # again inside the transaction: a face enrolled a moment ago under the old model counts too
        excused = Face.id.not_in(missing.without_photo or [0])
        still = session.scalars(select(Face.id).where(_enrolled(), _lacks(target_id), excused)).all()
        if still:
            _refuse_incomplete(key, list(still))
        old = current_row(session)
        target = session.get(EmbeddingModel, target_id)
        assert target is not None
        if old is not None and old.id != target.id:
            old.state = ModelState.available
            session.flush()  # one current row at any moment: the partial unique index checks each statement
        target.state = ModelState.current
        if thresholds:
            target.spec = {**(target.spec or {}), "thresholds": thresholds}
        if model_thresholds(target.spec):
            for row in session.scalars(select(RuntimeSetting).where(RuntimeSetting.key.in_(THRESHOLD_KEYS))):
                removed[row.key] = row.value
                session.delete(row)
        uow.audit(
            MODEL_SWITCHED,
            target_type="embedding_model",
            target_id=key,
            before={"model": None if old is None else old.key, "overrides": removed or None},
            after={"model": key, "thresholds": model_thresholds(target.spec) or None,
                   "faces_without_photo": len(missing.without_photo)},
        )
        before = None if old is None else old.key
        stored = model_thresholds(target.spec)
    return SwitchResult(before, key, stored, topped_up, missing.without_photo, removed)


def _refuse_incomplete(key: str, face_ids: list[int]) -> None:
    shown = ", ".join(map(str, face_ids[:10])) + (" ..." if len(face_ids) > 10 else "")
    raise Conflict(
        f"{len(face_ids)} enrolled face(s) have no embedding of {key} yet (faces {shown}): run "
        "`childface reembed` for that model again, then switch",
        code="model_incomplete",
    )


def set_thresholds(db: Database, actor: Actor, key: str, *, accept: float, review: float) -> dict[str, float]:
    """Store a model's own decision thresholds (one unit of work, `model.thresholds`); every process
    serving it uses them from its next catch-up."""
    thresholds = check_thresholds(accept, review)
    with db.unit_of_work(actor) as uow:
        row = model_row(uow.session, key)
        before = model_thresholds(row.spec)
        row.spec = {**(row.spec or {}), "thresholds": thresholds}
        uow.audit(MODEL_THRESHOLDS, target_type="embedding_model", target_id=key,
                  before={"thresholds": before or None}, after={"thresholds": thresholds})
    return thresholds


# ---- dropping ------------------------------------------------------------------------------------------


def drop_model(
    db: Database, actor: Actor, key: str, *, snapshot: Path | None = None, batch: int = DROP_BATCH
) -> int:
    """Delete a model that is not current: its embeddings in batches, then its row, jobs and snapshot file.

    Each batch is one unit of work with a `model.dropped` event listing its faces
    (a process still holding that model's index drops them too); the last one also
    deletes the row. Refused (Conflict) for the current model and while a
    re-embedding for it runs. Returns the number of embeddings deleted.
    """
    with db.session() as session:
        row = model_row(session, key)
        model_id, state = row.id, row.state
        running = session.scalar(
            select(ReembedJob.id).where(ReembedJob.model_id == model_id, ReembedJob.status == "running")
        )
    if state == ModelState.current:
        raise Conflict(f"model {key} is the current model: switch to another one first", code="model_current")
    if running is not None:
        raise Conflict(f"a re-embedding for {key} is running (job {running})", code="reembed_running")
    deleted = 0
    while True:
        with db.unit_of_work(actor) as uow:
            session = uow.session
            row = session.get(EmbeddingModel, model_id)
            if row is None or row.state == ModelState.current:
                raise Conflict(f"model {key} changed meanwhile; nothing more was deleted",
                               code="model_changed")
            ids = session.execute(
                select(Embedding.id, Embedding.face_id).where(Embedding.model_id == model_id)
                .order_by(Embedding.id).limit(batch)
            ).all()
            last = len(ids) < batch
            if ids:
                session.execute(delete(Embedding).where(Embedding.id.in_([i for i, _ in ids])))
            if last:
                session.execute(delete(ReembedJob).where(ReembedJob.model_id == model_id))
                session.delete(row)
            deleted += len(ids)
            uow.audit(MODEL_DROPPED, target_type="embedding_model", target_id=key,
                      after={"model": key, "embeddings": len(ids), "model_deleted": last},
                      face_ids=[f for _, f in ids])
        if last:
            break
    if snapshot is not None:
        snapshot.unlink(missing_ok=True)
    log.info("embedding model %s dropped: %d embeddings deleted", key, deleted)
    return deleted


def model_event_after(session: Session, seen: int, upto: int | None = None) -> int | None:
    """The seq of a model switch or threshold change after `seen` (up to `upto`), or None."""
    query = select(AuditEvent.seq).where(AuditEvent.action.in_(FOLLOWED_ACTIONS), AuditEvent.seq > seen)
    if upto is not None:
        query = query.where(AuditEvent.seq <= upto)
    return session.scalar(query.order_by(AuditEvent.seq).limit(1))


def doctor_report(db: Database, settings: Settings) -> dict[str, Any]:
    """`childface doctor`'s view: the current model, and how the configured embedder relates to it."""
    with db.session() as session:
        row = current_row(session)
        current = None if row is None else (row.key, row.spec)
    if current is None:
        return {"current": "none yet: the server decides at its first start (the configured embedder, unless "
                           "the stored faces are of another model)"}
    key, spec = current
    report: dict[str, Any] = {"current": key, "spec": public_spec(spec)}
    note = configured_note(key, spec, settings)
    if note:
        report["note"] = note
    return report
