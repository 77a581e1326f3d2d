"""Computing another model's embedding for every stored face (`childface reembed`, `POST /models/reembed`).

Contract
--------
- Target: a model given by its spec (services/embedding_models.py); it is registered
  (state "available", spec recorded) and loaded with the normal pipeline path, on the
  configured device.
- Faces: every face in state enrolled or pending review (retired templates too) that
  has no embedding of the target. Each face's stored photo is read and decoded, and the
  face is aligned on its STORED landmarks (`FacePipeline.embed_at`: no detection, so the
  new model sees exactly the face staff enrolled), in batches.
- Writes: per batch ONE unit of work adds the rows (`Embedding.of`) and updates the
  job's counters, with ONE audit event `model.reembedded` listing the faces. No slow
  work (decoding, inference) runs inside it. Recognition keeps using the current model
  meanwhile: galleries of other models ignore these rows.
- Job: a `reembed_jobs` row (at most one running: a partial unique index) with owner
  "host:pid" and a heartbeat per batch. A running job whose process is gone (same host,
  pid dead) or silent for `STALE_AFTER_S` is marked failed by the next start. Progress
  is the database itself: a new run resumes with the faces still missing.
- Faces that cannot be embedded (photo file missing or unreadable, photo not the one
  recorded, landmarks outside it) are counted in `failed` and listed in the job's
  `error` text, one "face N: reason" per line; the run goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError

from childface.config import Settings
from childface.db.models import Embedding, EmbeddingModel, Face, Image, ReembedJob, ReviewState
from childface.db.session import Actor, Database
from childface.services.embedding_models import settings_for_spec
from childface.services.errors import Conflict, InvalidInput
from childface.services.gallery import ensure_embedding_model
from childface.services.media import MediaStore
from childface.services.owners import current_owner, owner_alive
from childface.vision.decode import ImageDecodeError, decode_image

if TYPE_CHECKING:
    from childface.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

MODEL_REEMBEDDED = "model.reembedded"
#: a running job without a heartbeat for this long was interrupted (a crash, a lost machine)
STALE_AFTER_S = 120.0
#: faces per batch by default (one unit of work each)
BATCH = 32
#: states whose faces get the target embedding
STATES = (ReviewState.enrolled, ReviewState.pending_review)
_SYSTEM = Actor("system", "reembed")


@dataclass
class JobView:
    """A re-embedding job as shown to people and clients."""

    id: int
    model_key: str
    status: str
    started_by: str
    started_at: datetime
    finished_at: datetime | None
    heartbeat_at: datetime | None
    owner: str | None
    total: int
    done: int
    failed: int
    faces_per_s: float | None
    error: str | None
    failures: list[tuple[int, str]] = field(default_factory=list)

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the measured speed (running jobs only)."""
        if self.status != "running" or not self.faces_per_s:
            return None
        return max(0, self.total - self.done - self.failed) / self.faces_per_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "model_key": self.model_key, "status": self.status, "started_by": self.started_by,
            "started_at": self.started_at.isoformat(),
            "finished_at": None if self.finished_at is None else self.finished_at.isoformat(),
            "heartbeat_at": None if self.heartbeat_at is None else self.heartbeat_at.isoformat(),
            "owner": self.owner, "total": self.total, "done": self.done, "failed": self.failed,
            "faces_per_s": self.faces_per_s, "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "error": self.error, "failures": [{"face_id": f, "reason": r} for f, r in self.failures],
        }


def _view(job: ReembedJob, key: str) -> JobView:
    failures, message = _parse_error(job.error)
    return JobView(job.id, key, job.status, job.started_by, job.started_at, job.finished_at, job.heartbeat_at,
                   job.owner, job.total, job.done, job.failed, job.faces_per_s, message, failures)


def _parse_error(text: str | None) -> tuple[list[tuple[int, str]], str | None]:
    failures, other = [], []
    for line in (text or "").splitlines():
        head, _, reason = line.partition(": ")
        if head.startswith("face ") and head[5:].isdigit():
            failures.append((int(head[5:]), reason))
        elif line:
            other.append(line)
    return failures, "\n".join(other) or None


def _error_text(failures: Sequence[tuple[int, str]], message: str | None = None) -> str | None:
    lines = [f"face {f}: {r}" for f, r in failures] + ([message] if message else [])
    return "\n".join(lines) or None


def _with_key() -> Any:
    key = EmbeddingModel.id == ReembedJob.model_id
    return select(ReembedJob, EmbeddingModel.key).join(EmbeddingModel, key)


def latest_job(db: Database) -> JobView | None:
    """The newest job (running or not), or None when none ever ran."""
    with db.session() as session:
        row = session.execute(
            _with_key().order_by(ReembedJob.id.desc()).limit(1)
        ).first()
    return None if row is None else _view(*row)


def job(db: Database, job_id: int) -> JobView:
    with db.session() as session:
        row = session.execute(
            _with_key().where(ReembedJob.id == job_id)
        ).one()
    return _view(*row)


# ---- target model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    model_id: int
    key: str
    pipeline: FacePipeline


def load_target(db: Database, settings: Settings, spec: dict[str, Any]) -> Target:
    """Load the embedder `spec` describes (with `settings`' device) and register it as a model.

    InvalidInput (`model_unloadable`) when it cannot be loaded: weights missing, not a
    known format or architecture. A model already current stays current.
    """
    from childface.vision.pipeline import FacePipeline

    try:
        pipeline = FacePipeline.from_settings(settings_for_spec(settings, spec))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise InvalidInput(
            f"cannot load embedder {spec.get('embedder')!r}: {exc}", code="model_unloadable"
        ) from None
    embedder = pipeline.embedder
    model_id = ensure_embedding_model(
        db, key=embedder.model_id, name=embedder.name, weights_sha256=embedder.weights_sha256,
        dim=embedder.dim, spec={k: spec[k] for k in ("embedder", "weights", "arch", "flip")},
    )
    return Target(model_id, embedder.model_id, pipeline)


# ---- jobs -------------------------------------------------------------------------------------------


def _candidates(model_id: int) -> Any:
    lacks = ~exists().where(Embedding.face_id == Face.id, Embedding.model_id == model_id)
    return Face.review_state.in_(STATES), lacks


def start_job(db: Database, actor: Actor, model_id: int) -> int:
    """Open a job for `model_id` (status running, owner this process); returns its id.

    Conflict `reembed_running` while another job runs; a job whose process is gone
    is marked failed first, so a crash never blocks re-embedding for good.
    """
    for attempt in range(2):
        try:
            with db.transaction() as session:
                total = session.scalar(
                    select(func.count()).select_from(Face).where(Face.review_state.in_(STATES))
                ) or 0
                missing = session.scalar(
                    select(func.count()).select_from(Face).where(*_candidates(model_id))
                ) or 0
                row = ReembedJob(model_id=model_id, status="running", started_by=str(actor),
                                 owner=current_owner(), heartbeat_at=datetime.now(UTC), total=total,
                                 done=total - missing, failed=0)
                session.add(row)
                session.flush()
                return row.id
        except IntegrityError:
            if attempt or not fail_interrupted_jobs(db):
                break
    running = running_job(db)
    detail = "" if running is None else (
        f" (job {running.id} for {running.model_key}, started by {running.started_by} at "
        f"{running.started_at:%Y-%m-%d %H:%M} UTC, {running.done}/{running.total} faces)"
    )
    raise Conflict(f"a re-embedding is running{detail}; wait for it to finish", code="reembed_running")


def running_job(db: Database) -> JobView | None:
    with db.session() as session:
        row = session.execute(
            _with_key().where(ReembedJob.status == "running")
        ).first()
    return None if row is None else _view(*row)


def fail_interrupted_jobs(db: Database, *, stale_after_s: float = STALE_AFTER_S) -> list[int]:
    """Mark running jobs whose process is gone (or silent too long) as failed; their ids."""
    cutoff = datetime.now(UTC) - timedelta(seconds=stale_after_s)
    failed = []
    with db.session() as session:
        rows = session.execute(
            select(ReembedJob.id, ReembedJob.owner, ReembedJob.heartbeat_at, ReembedJob.started_at)
            .where(ReembedJob.status == "running")
        ).all()
    for job_id, owner, beat, started in rows:
        if owner_alive(owner, started) is False:
            why = f"interrupted: the process {owner} is no longer running"
        elif (beat or started) < cutoff:
            why = f"interrupted: no sign of life from {owner} since {(beat or started):%Y-%m-%d %H:%M:%S} UTC"
        else:
            continue
        with db.transaction() as session:
            changed = session.execute(
                update(ReembedJob).where(ReembedJob.id == job_id, ReembedJob.status == "running",
                                         ReembedJob.heartbeat_at == beat)
                .values(status="failed", finished_at=datetime.now(UTC), error=why)
            ).rowcount
        if changed:
            log.warning("re-embedding job %d %s", job_id, why)
            failed.append(job_id)
    return failed


Progress = Callable[[JobView], None]


def run_job(
    db: Database,
    media: MediaStore,
    settings: Settings,
    job_id: int,
    target: Target,
    actor: Actor,
    *,
    batch_size: int = BATCH,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> JobView:
    """Embed every face the target lacks, batch by batch, then finish the job (see the module docstring).

    `stop` set: the job ends as "cancelled" after the batch in hand. An exception
    marks the job failed (its message in `error`) and is raised again.
    """
    started = time.perf_counter()
    embedded, failures = 0, []
    after = 0  # keyset: face ids only grow, so faces enrolled meanwhile come last and are taken too
    try:
        while not (stop is not None and stop.is_set()):
            with db.session() as session:
                rows = session.execute(
                    select(Face.id, Face.landmarks, Image.path, Image.width, Image.height)
                    .join(Image, Image.id == Face.image_id)
                    .where(*_candidates(target.model_id), Face.id > after)
                    .order_by(Face.id).limit(batch_size)
                ).all()
            if not rows:
                break
            after = rows[-1].id
            vectors, failed = _embed_rows(media, settings, target.pipeline, rows)
            failures += failed
            rate = (embedded + len(vectors)) / max(time.perf_counter() - started, 1e-9)
            embedded += _store(db, actor, job_id, target, vectors, len(failed), rate)
            if progress is not None:
                progress(job(db, job_id))
        status = "cancelled" if stop is not None and stop.is_set() else "finished"
        _finish(db, job_id, status, failures, None, embedded, started)
    except BaseException as exc:
        message = f"error: {exc}" if str(exc) else f"error: {type(exc).__name__}"
        _finish(db, job_id, "failed", failures, message, embedded, started)
        raise
    result = job(db, job_id)
    if progress is not None:
        progress(result)
    return result


def _embed_rows(
    media: MediaStore, settings: Settings, pipeline: FacePipeline, rows: Sequence[Any]
) -> tuple[dict[int, np.ndarray], list[tuple[int, str]]]:
    """Decode each photo once, embed its faces at their stored landmarks; (vectors by face, failures)."""
    images: list[np.ndarray] = []
    slot: dict[str, int] = {}  # photo path -> its index in `images`
    unusable: dict[str, str] = {}  # photo path -> why its faces cannot be embedded
    index, points, faces, failed = [], [], [], []
    for row in rows:
        if row.path not in slot and row.path not in unusable:
            rgb, why = _photo(media, settings, row)
            if rgb is None:
                unusable[row.path] = why
            else:
                slot[row.path] = len(images)
                images.append(rgb)
        if row.path in unusable:
            failed.append((row.id, unusable[row.path]))
            continue
        marks = np.asarray(row.landmarks, dtype=np.float32).reshape(-1)
        if marks.shape != (10,) or not np.isfinite(marks).all() or not _inside(marks.reshape(5, 2), row):
            failed.append((row.id, "landmarks missing or outside the photo"))
            continue
        index.append(slot[row.path])
        points.append(marks.reshape(5, 2))
        faces.append(row.id)
    if not faces:
        return {}, failed
    vectors = pipeline.embed_at(images, index, np.stack(points))
    return dict(zip(faces, vectors, strict=True)), failed


def _photo(media: MediaStore, settings: Settings, row: Any) -> tuple[np.ndarray | None, str]:
    """The face's stored photo, decoded as at enrollment; (None, why) when it cannot be used."""
    try:
        rgb = decode_image(media.read(row.path), settings.max_image_pixels)
    except FileNotFoundError:
        return None, "photo file missing"
    except ImageDecodeError as exc:
        return None, f"photo unreadable ({exc.message})"
    except OSError as exc:
        return None, f"photo unreadable ({exc.strerror or exc})"
    if rgb.shape[:2] != (row.height, row.width):
        return None, f"photo is {rgb.shape[1]}x{rgb.shape[0]}, recorded as {row.width}x{row.height}"
    return rgb, ""


def _inside(marks: np.ndarray, row: Any) -> bool:
    x, y = marks[:, 0], marks[:, 1]
    return bool((x >= 0).all() and (y >= 0).all() and (x <= row.width).all() and (y <= row.height).all())


def _store(
    db: Database,
    actor: Actor,
    job_id: int | None,
    target: Target,
    vectors: dict[int, np.ndarray],
    failed: int,
    faces_per_s: float | None = None,
) -> int:
    """One unit of work: the batch's embeddings, the job's counters and one `model.reembedded` event.

    Faces removed meanwhile are left out; faces that got the embedding meanwhile
    (a switch's top-up beside a job) keep theirs. Returns the rows written.
    """
    now = datetime.now(UTC)
    counters = update(ReembedJob).where(ReembedJob.id == job_id)
    if not vectors:
        if job_id is not None:
            with db.transaction() as session:
                session.execute(counters.values(failed=ReembedJob.failed + failed, heartbeat_at=now))
        return 0
    with db.unit_of_work(actor) as uow:
        session = uow.session
        ids = list(vectors)
        # KEY SHARE: an erasure of these faces waits for this commit (then takes the new rows with it)
        # instead of deleting them between this check and the insert
        locked = select(Face.id).where(Face.id.in_(ids)).with_for_update(key_share=True)
        present = set(session.scalars(locked))
        have = set(session.scalars(select(Embedding.face_id).where(
            Embedding.face_id.in_(ids), Embedding.model_id == target.model_id)))
        written = [f for f in ids if f in present and f not in have]
        for face_id in written:
            vector = np.ascontiguousarray(vectors[face_id], dtype="<f4").reshape(-1)
            session.add(Embedding.of(face_id=face_id, model_id=target.model_id, vector=vector.tobytes()))
        if job_id is not None:
            session.execute(counters.values(
                done=ReembedJob.done + len(written), failed=ReembedJob.failed + failed, heartbeat_at=now,
                faces_per_s=None if not faces_per_s else round(faces_per_s, 2)))
        uow.audit(MODEL_REEMBEDDED, target_type="embedding_model", target_id=target.key,
                  after={"model": target.key, "job": job_id, "faces": len(written)}, face_ids=written)
    return len(written)


def _finish(
    db: Database,
    job_id: int,
    status: str,
    failures: list[tuple[int, str]],
    message: str | None,
    embedded: int,
    started: float,
) -> None:
    elapsed = time.perf_counter() - started
    with db.transaction() as session:
        row = session.get(ReembedJob, job_id)
        if row is None:
            return
        row.status = status
        row.finished_at = datetime.now(UTC)
        row.heartbeat_at = row.finished_at
        if embedded and elapsed > 0:
            row.faces_per_s = round(embedded / elapsed, 2)
        row.error = _error_text(failures, message)
        if status == "finished":
            # faces enrolled meanwhile were taken too: the total is what was there to do
            row.total = max(row.total, row.done + row.failed)


def embed_missing(
    db: Database,
    media: MediaStore,
    settings: Settings,
    target: Target,
    actor: Actor,
    face_ids: Sequence[int],
    *,
    batch_size: int = BATCH,
) -> list[tuple[int, str]]:
    """Embed these faces with the target now, outside any job (a switch's top-up); returns the failures."""
    failures: list[tuple[int, str]] = []
    ids = sorted(set(face_ids))
    for start in range(0, len(ids), batch_size):
        with db.session() as session:
            rows = session.execute(
                select(Face.id, Face.landmarks, Image.path, Image.width, Image.height)
                .join(Image, Image.id == Face.image_id)
                .where(Face.id.in_(ids[start : start + batch_size]), *_candidates(target.model_id))
                .order_by(Face.id)
            ).all()
        vectors, failed = _embed_rows(media, settings, target.pipeline, rows)
        failures += failed
        _store(db, actor, None, target, vectors, len(failed))
    return failures


def reembed(
    db: Database,
    media: MediaStore,
    settings: Settings,
    spec: dict[str, Any],
    actor: Actor = _SYSTEM,
    *,
    batch_size: int = BATCH,
    progress: Progress | None = None,
    stop: threading.Event | None = None,
) -> JobView:
    """Load and register the target, open a job and run it to the end (the CLI's whole command)."""
    target = load_target(db, settings, spec)
    job_id = start_job(db, actor, target.model_id)
    return run_job(db, media, settings, job_id, target, actor, batch_size=batch_size, progress=progress,
                   stop=stop)
