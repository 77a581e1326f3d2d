"""What `childface verify` checks and repairs, the API's start-up check, and `childface gc-media`.

A deployment is consistent when (DESIGN.md invariants 1 and 3):
- every photo file in the media folder has an `images` row, and every row its file;
- every photo file holds the bytes its sha256 name says;
- every embedding is intact: its checksum (`embedding_checksum(model_id, vector)`) holds, its
  vector has its model's `dim` values and unit length. Problems, per embedding row:
  `unchecked` (NULL checksum), `checksum_mismatch` (the vector changed), `moved_model` (the
  checksum holds for another model's id: the row was moved), `wrong_length`, `not_unit`;
- `verify_recompute_sample` faces of the loadable model (below), embedded again from their stored
  photos at their stored landmarks, give their stored vectors (cosine >= RECOMPUTE_MIN_COSINE);
  a lower value (`recompute_mismatch`) means the model changed under the same id or the row holds
  another face's vector. Faces from video crops are left out of the sample (their photo is a JPEG
  of the aligned chip, not the frame the vector came from);
- each embedding model's vector index, caught up, equals what a rebuild from the DB gives;
- no temporary file, import scratch folder, journal entry or `running` import is
  left by a dead process (what start-up recovery would clean: `services.recovery`).

The loadable model is the one whose embedder this process can build: the `current` row of
`embedding_models` (loaded from its `spec`), or, when no row is current, the configured
embedder's model. Only it is loaded; other models' embeddings are checked by checksum only.

Repair (`verify --repair`): every embedding with a problem is embedded again from its stored
photo with its model's embedder (the model the vector was made by: for a moved row, the model it
came from), when that model is the loadable one; all new vectors are written in ONE unit of work
with ONE `integrity.repaired` event listing the repaired faces (every process's index re-reads
them), only into rows unchanged since they were judged. The snapshot of each touched model's
index is brought up to date. What cannot be repaired is listed per face with its reason: the
model is not loadable, the photo is missing or its bytes do not match its sha256, it cannot be
decoded, or its stored landmarks are invalid (no face at the landmarks); faces on missing or
damaged photos are listed too, whatever their embeddings.

Start-up (`quick_check`, `StartupCheck`): the API runs the cheap part once at start, off the
request path: checksums of the served model's embeddings, image rows whose file is missing (a
stat each, no hashing) and the index's face count against the DB's. `/readyz` and `doctor`
report it; it never makes the API unready. Corrupt embeddings are not searched meanwhile: the
gallery leaves out rows whose checksum fails (`services.gallery.read_indexable`).

Files a live writer announced (`file_journal.pending_writes`) are in flight, not
findings. `collect_garbage` deletes unreferenced photo files through the file
journal's sweep, so it never races a writer; rows without files cannot be
repaired here (the photo is gone: remove those faces, or re-enroll the photos).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from sqlalchemy import func, select

from childface.config import Settings
from childface.db.models import (
    AuditEvent,
    Embedding,
    EmbeddingModel,
    Face,
    FileDeletion,
    Image,
    ModelState,
    embedding_checksum,
)
from childface.db.session import Actor, Database
from childface.services import file_journal, recovery
from childface.services.media import MediaStore

if TYPE_CHECKING:
    from childface.services.gallery import Gallery
    from childface.vision.pipeline import FacePipeline

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[Sequence[T]], Iterable[T]]

#: a journaled deletion younger than this may still be swept by the process that made it
REMOVED_SETTLE_S = 60.0
_PHOTO_NAME = re.compile(r"([0-9a-f]{2})/([0-9a-f]{2})/([0-9a-f]{64})\.[a-z0-9]+")
_HASH_CHUNK = 1 << 20
_ID_CHUNK = 500

#: who writes a repair into the audit trail
VERIFY_ACTOR = Actor("system", "verify")
REPAIR_ACTION = "integrity.repaired"
#: a stored vector and its re-computation from the photo agree at least this well (same model, same
#: photo, same landmarks: they differ only by float rounding across devices and batch sizes)
RECOMPUTE_MIN_COSINE = 0.999
#: a unit vector's norm is 1 within this
UNIT_TOLERANCE = 1e-3
#: photos decoded and embedded per pipeline call (bounds the decoded pixels held at once)
_EMBED_PHOTOS = 8

# embedding problems, in the order reports list them
UNCHECKED = "unchecked"
CHECKSUM_MISMATCH = "checksum_mismatch"
MOVED_MODEL = "moved_model"
WRONG_LENGTH = "wrong_length"
NOT_UNIT = "not_unit"
RECOMPUTE_MISMATCH = "recompute_mismatch"
PROBLEMS = (UNCHECKED, CHECKSUM_MISMATCH, MOVED_MODEL, WRONG_LENGTH, NOT_UNIT, RECOMPUTE_MISMATCH)

# why a face could not be re-embedded
MODEL_NOT_LOADABLE = "model_not_loadable"
PHOTO_MISSING = "photo_missing"
PHOTO_DAMAGED = "photo_damaged"
PHOTO_UNDECODABLE = "photo_undecodable"
NO_FACE_AT_LANDMARKS = "no_face_at_landmarks"
_REASON_WORDS = {
    PHOTO_MISSING: "the photo is missing from the media folder (or cannot be read)",
    PHOTO_DAMAGED: "the photo's bytes do not match its sha256",
    PHOTO_UNDECODABLE: "the photo cannot be decoded",
    NO_FACE_AT_LANDMARKS: "no face at the stored landmarks (missing, invalid or outside the photo)",
}


def _no_progress(items: Sequence[T]) -> Iterable[T]:
    return items


class Bar(Protocol):
    """A progress bar (tqdm's interface): `update(n)` as work is done, `close()` at the end."""

    def update(self, n: int) -> Any: ...

    def close(self) -> Any: ...


#: makes a bar for `total` items: bar_factory(total=..., desc=..., unit=...)
BarFactory = Callable[..., Bar]


class _NoBar:
    def update(self, n: int) -> None:
        return None

    def close(self) -> None:
        return None


def no_bar(**_: Any) -> Bar:
    return _NoBar()


# ---- media ------------------------------------------------------------------------------------------


@dataclass
class MediaScan:
    """The media folder against the `images` table."""

    photo_files: list[str] = field(default_factory=list)  # relative paths named like stored photos
    files_without_rows: list[str] = field(default_factory=list)  # photo-named files no row refers to
    unexpected_files: list[str] = field(default_factory=list)  # neither a photo name nor a temporary file
    rows_without_files: list[tuple[int, str]] = field(default_factory=list)  # (image id, path)
    in_flight: int = 0  # files a live writer announced: not judged


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")


def scan_media(
    db: Database, media: MediaStore, *, pending_grace_s: float = file_journal.PENDING_WRITE_GRACE_S
) -> MediaScan:
    """Compare the files under the media folder with the `images` rows (no hashing)."""
    scan = MediaScan()
    on_disk: list[str] = []
    for folder, _, names in os.walk(media.root):
        for name in names:
            if not _is_temp(name):
                on_disk.append((Path(folder).relative_to(media.root) / name).as_posix())
    with db.session() as session:
        rows = session.execute(select(Image.id, Image.path)).all()
        pending = session.execute(
            select(FileDeletion.id, FileDeletion.path, FileDeletion.owner, FileDeletion.requested_at).where(
                FileDeletion.reason == file_journal.PENDING_WRITE
            )
        ).all()
    live = {
        p.path for p in pending if file_journal.writer_alive(p.id, p.owner, p.requested_at, pending_grace_s)
    }
    referenced = {path for _, path in rows}
    for relative in sorted(on_disk):
        if not _PHOTO_NAME.fullmatch(relative) or not _named_right(relative):
            scan.unexpected_files.append(relative)
            continue
        scan.photo_files.append(relative)
        if relative in referenced:
            continue
        if relative in live:
            scan.in_flight += 1
        else:
            scan.files_without_rows.append(relative)
    present = set(on_disk)
    missing = [(image_id, path) for image_id, path in rows if path not in present]
    # a running server may have written or deleted meanwhile (the walk came first): look again at the few
    scan.files_without_rows = [r for r in scan.files_without_rows if media.absolute(r).exists()]
    scan.rows_without_files = sorted(_still_missing(db, media, missing))
    return scan


def _still_missing(db: Database, media: MediaStore, missing: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Those of `missing` (image id, path) whose row still exists and whose file is still absent."""
    if not missing:
        return []
    ids = [i for i, _ in missing]
    still: set[int] = set()
    with db.session() as session:
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            still.update(session.scalars(select(Image.id).where(Image.id.in_(chunk))))
    return [(i, path) for i, path in missing if i in still and not media.absolute(path).exists()]


def _named_right(relative: str) -> bool:
    found = _PHOTO_NAME.fullmatch(relative)
    assert found is not None
    return found.group(3).startswith(found.group(1) + found.group(2))


def content_mismatches(
    media: MediaStore, photo_files: Sequence[str], progress: Progress = _no_progress
) -> list[str]:
    """Photo files whose bytes do not hash to their name (read in full: slow for large folders)."""
    bad: list[str] = []
    for relative in progress(photo_files):
        digest = hashlib.sha256()
        try:
            with media.absolute(relative).open("rb") as fh:
                while chunk := fh.read(_HASH_CHUNK):
                    digest.update(chunk)
        except FileNotFoundError:
            continue  # deleted meanwhile (a sweep): not a content problem
        if PurePosixPath(relative).stem != digest.hexdigest():
            bad.append(relative)
    return bad


def missing_photo_rows(db: Database, media: MediaStore) -> list[tuple[int, str]]:
    """Image rows whose file is missing: one stat per row, no hashing, no walk of the folder."""
    from childface.services.gallery import fetch_batches  # late: the gallery module loads the index

    root = str(media.root)
    missing: list[tuple[int, str]] = []
    with db.session() as session:
        for batch in fetch_batches(session, select(Image.id, Image.path).order_by(Image.id)):
            missing += [(i, p) for i, p in batch if not os.path.exists(os.path.join(root, p))]
    return _still_missing(db, media, missing)


# ---- embeddings: checksums, length, norm ------------------------------------------------------------


@dataclass
class EmbeddingFinding:
    """One embedding row with problems (codes in `PROBLEMS`)."""

    embedding_id: int
    face_id: int
    model_id: int  # the row's model
    problems: list[str]
    #: the model that made the vector: another model's id for a moved row (its checksum holds there)
    source_model_id: int
    #: the row as judged (its stored checksum, the checksum of its bytes under its model): a repair
    #: writes only into a row that is still so
    stored_checksum: str | None
    seen_checksum: str
    cosine: float | None = None  # recompute_mismatch: stored vector against its re-computation

    def to_dict(self, keys: dict[int, str]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "embedding_id": self.embedding_id,
            "face_id": self.face_id,
            "model": keys.get(self.model_id, str(self.model_id)),
            "problems": self.problems,
        }
        if self.source_model_id != self.model_id:
            out["made_by_model"] = keys.get(self.source_model_id, str(self.source_model_id))
        if self.cosine is not None:
            out["cosine"] = round(self.cosine, 6)
        return out


@dataclass
class EmbeddingScan:
    """Every embedding row checked (or those of some models): counts and the rows with problems."""

    checked: dict[str, int] = field(default_factory=dict)  # model key -> rows checked
    findings: list[EmbeddingFinding] = field(default_factory=list)
    model_keys: dict[int, str] = field(default_factory=dict)  # model row id -> key


@dataclass(frozen=True)
class _Model:
    key: str
    dim: int


def _models(db: Database) -> dict[int, _Model]:
    with db.session() as session:
        rows = session.execute(select(EmbeddingModel.id, EmbeddingModel.key, EmbeddingModel.dim)).all()
    return {row.id: _Model(row.key, row.dim) for row in rows}


def scan_embeddings(
    db: Database, *, model_ids: Collection[int] | None = None, bar: BarFactory = no_bar
) -> EmbeddingScan:
    """Check every embedding row (of `model_ids`; all when None): checksum, length, unit norm.

    Streams the rows in batches (a server-side cursor on PostgreSQL); one sha256 of about 512
    bytes per row.
    """
    from childface.services.gallery import fetch_batches  # late: the gallery module loads the index

    models = _models(db)
    scan = EmbeddingScan(model_keys={i: m.key for i, m in models.items()})
    prefixes = {i: hashlib.sha256(b"%d:" % i) for i in models}
    query = select(Embedding.id, Embedding.face_id, Embedding.model_id, Embedding.vector, Embedding.checksum)
    counted = select(func.count(Embedding.id))
    if model_ids is not None:
        query = query.where(Embedding.model_id.in_(list(model_ids)))
        counted = counted.where(Embedding.model_id.in_(list(model_ids)))
    per_model: Counter[int] = Counter()
    with db.session() as session:
        progress = bar(total=int(session.scalar(counted) or 0), desc="checking embeddings", unit="row")
        try:
            for batch in fetch_batches(session, query.order_by(Embedding.id)):
                if any(row[2] not in models for row in batch):  # a model registered since we began
                    models = _models(db)
                    prefixes = {i: hashlib.sha256(b"%d:" % i) for i in models}
                    scan.model_keys = {i: m.key for i, m in models.items()}
                scan.findings += _judge(batch, models, prefixes)
                per_model.update(row[2] for row in batch)
                progress.update(len(batch))
        finally:
            progress.close()
    scan.checked = {models[i].key: n for i, n in sorted(per_model.items())}
    return scan


def _digest(prefix: Any, blob: bytes) -> str:
    digest = prefix.copy()
    digest.update(blob)
    return digest.hexdigest()


def _judge(
    batch: Sequence[tuple], models: dict[int, _Model], prefixes: dict[int, Any]
) -> list[EmbeddingFinding]:
    """The rows of one batch that have problems."""
    sized: dict[int, list[tuple[int, bytes]]] = defaultdict(list)  # dim -> (position, blob) of right length
    judged: list[EmbeddingFinding] = []
    for embedding_id, face_id, model_id, blob, stored in batch:
        blob = bytes(blob)
        seen = _digest(prefixes[model_id], blob)
        problems: list[str] = []
        source = model_id
        if stored is None:
            problems.append(UNCHECKED)
        elif stored != seen:
            moved = next((m for m in models if m != model_id and _digest(prefixes[m], blob) == stored), None)
            if moved is None:
                problems.append(CHECKSUM_MISMATCH)
            else:
                problems.append(MOVED_MODEL)
                source = moved
        dim = models[source].dim
        if len(blob) != dim * 4:
            problems.append(WRONG_LENGTH)
        else:
            sized[dim].append((len(judged), blob))
        judged.append(EmbeddingFinding(embedding_id, face_id, model_id, problems, source, stored, seen))
    for dim, rows in sized.items():
        vectors = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f4").reshape(-1, dim)
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
        for (position, _), norm in zip(rows, norms, strict=True):
            if not abs(norm - 1.0) <= UNIT_TOLERANCE:  # NaN and inf count as not unit
                judged[position].problems.append(NOT_UNIT)
    return [f for f in judged if f.problems]


# ---- the loadable model and re-computation from photos ---------------------------------------------


@dataclass
class LoadedModel:
    """The one embedding model this process can compute: its row and a pipeline that makes it."""

    row_id: int
    key: str
    dim: int
    pipeline: FacePipeline


def loadable_model(settings: Settings, db: Database) -> tuple[LoadedModel | None, str | None]:
    """(the loadable model, None), or (None, why there is none): see the module docstring."""
    from childface.services.embedding_models import settings_for_spec
    from childface.vision.pipeline import FacePipeline  # late: torch

    with db.session() as session:
        rows = session.execute(
            select(EmbeddingModel.id, EmbeddingModel.key, EmbeddingModel.dim, EmbeddingModel.spec,
                   EmbeddingModel.state)
        ).all()
    current = next((r for r in rows if r.state == ModelState.current), None)
    wanted = settings_for_spec(settings, current.spec) if current is not None and current.spec else settings
    try:
        pipeline = FacePipeline.from_settings(wanted)
    except Exception as exc:  # noqa: BLE001 - missing weights, bad spec: reported, not raised
        name = current.key if current is not None else "the configured embedder"
        return None, f"model {name} not loadable ({type(exc).__name__}: {exc})"
    if current is not None and pipeline.model_id != current.key:
        return None, f"model {current.key} not loadable: its embedder here computes {pipeline.model_id}"
    row = next((r for r in rows if r.key == pipeline.model_id), None)
    if row is None:
        return None, f"no embeddings of the configured model {pipeline.model_id}"
    return LoadedModel(row.id, row.key, row.dim, pipeline), None


@dataclass(frozen=True)
class _FaceRef:
    face_id: int
    image_sha256: str
    path: str
    landmarks: Any


def _face_refs(db: Database, face_ids: Collection[int]) -> dict[int, _FaceRef]:
    ids = sorted(set(face_ids))
    refs: dict[int, _FaceRef] = {}
    with db.session() as session:
        for start in range(0, len(ids), _ID_CHUNK):
            rows = session.execute(
                select(Face.id, Image.sha256, Image.path, Face.landmarks)
                .join(Image, Image.id == Face.image_id)
                .where(Face.id.in_(ids[start : start + _ID_CHUNK]))
            ).all()
            refs.update({r.id: _FaceRef(r.id, r.sha256, r.path, r.landmarks) for r in rows})
    return refs


def _valid_landmarks(landmarks: Any, width: int, height: int) -> np.ndarray | None:
    """The (5, 2) landmarks when they can place a face in a photo of this size, else None."""
    try:
        points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    except (TypeError, ValueError):
        return None
    if not np.isfinite(points).all() or np.linalg.norm(points[0] - points[1]) < 1.0:
        return None
    x, y = points.mean(axis=0)
    return points.astype(np.float32) if 0 <= x < width and 0 <= y < height else None


def embed_from_photos(
    pipeline: FacePipeline,
    media: MediaStore,
    refs: Sequence[_FaceRef],
    *,
    max_pixels: int,
    bar: BarFactory = no_bar,
) -> tuple[dict[int, np.ndarray], dict[int, str]]:
    """Each face embedded again from its stored photo at its stored landmarks.

    Returns (face id -> unit vector, face id -> reason code it could not be). A photo is used only
    when its bytes hash to its sha256 (a damaged photo would give a wrong vector).
    """
    from childface.vision.decode import ImageDecodeError, decode_image

    by_photo: dict[str, list[_FaceRef]] = defaultdict(list)
    for ref in refs:
        by_photo[ref.path].append(ref)
    vectors: dict[int, np.ndarray] = {}
    failed: dict[int, str] = {}
    paths = sorted(by_photo)
    progress = bar(total=len(refs), desc="embedding faces again", unit="face")
    try:
        for start in range(0, len(paths), _EMBED_PHOTOS):
            images: list[np.ndarray] = []
            index: list[int] = []
            points: list[np.ndarray] = []
            faces: list[int] = []
            for path in paths[start : start + _EMBED_PHOTOS]:
                group = by_photo[path]
                try:
                    data = media.read(path)
                except (OSError, ValueError):  # gone, unreadable, or a path outside the media folder
                    failed.update({r.face_id: PHOTO_MISSING for r in group})
                    continue
                if hashlib.sha256(data).hexdigest() != group[0].image_sha256:
                    failed.update({r.face_id: PHOTO_DAMAGED for r in group})
                    continue
                try:
                    rgb = decode_image(data, max_pixels)
                except ImageDecodeError:
                    failed.update({r.face_id: PHOTO_UNDECODABLE for r in group})
                    continue
                height, width = rgb.shape[:2]
                for ref in group:
                    placed = _valid_landmarks(ref.landmarks, width, height)
                    if placed is None:
                        failed[ref.face_id] = NO_FACE_AT_LANDMARKS
                        continue
                    index.append(len(images))
                    points.append(placed)
                    faces.append(ref.face_id)
                images.append(rgb)
            if faces:
                computed = pipeline.embed_at(images, index, np.stack(points))
                vectors.update(zip(faces, computed, strict=True))
            progress.update(sum(len(by_photo[p]) for p in paths[start : start + _EMBED_PHOTOS]))
    finally:
        progress.close()
    return vectors, failed


@dataclass
class RecomputeCheck:
    """The sample of faces embedded again from their photos (see the module docstring)."""

    model_key: str | None = None
    sampled: int = 0
    compared: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason code -> faces not compared
    mismatches: list[EmbeddingFinding] = field(default_factory=list)
    not_run: str | None = None  # why there was no sample (no loadable model, sample size 0, ...)

    def to_dict(self, keys: dict[int, str]) -> dict[str, Any]:
        return {
            "model": self.model_key,
            "sampled": self.sampled,
            "compared": self.compared,
            "skipped": self.skipped,
            "mismatches": [f.to_dict(keys) for f in self.mismatches],
            "not_run": self.not_run,
        }


def recompute_sample(
    settings: Settings,
    db: Database,
    media: MediaStore,
    model: LoadedModel,
    size: int,
    *,
    exclude: Collection[int] = (),
    bar: BarFactory = no_bar,
) -> RecomputeCheck:
    """Embed `size` random faces of `model` again from their photos and compare (module docstring).

    `exclude`: embedding ids already found corrupt (their stored vector means nothing).
    """
    from childface.services.sightings import WATCH_ACTOR

    check = RecomputeCheck(model_key=model.key)
    excluded = set(exclude)
    with db.session() as session:
        picked = list(
            session.scalars(
                select(Embedding.id)
                .join(Face, Face.id == Embedding.face_id)
                .join(Image, Image.id == Face.image_id)
                .where(Embedding.model_id == model.row_id, Image.uploaded_by != str(WATCH_ACTOR))
                .order_by(func.random())
                .limit(size + len(excluded))
            )
        )
        picked = [i for i in picked if i not in excluded][:size]
        rows = session.execute(
            select(Embedding.id, Embedding.face_id, Embedding.vector, Embedding.checksum).where(
                Embedding.id.in_(picked)
            )
        ).all() if picked else []
    check.sampled = len(rows)
    if not rows:
        return check
    refs = _face_refs(db, [r.face_id for r in rows])
    vectors, failed = embed_from_photos(
        model.pipeline, media, list(refs.values()), max_pixels=settings.max_image_pixels, bar=bar
    )
    check.skipped = dict(Counter(failed.values()))
    for row in rows:
        fresh = vectors.get(row.face_id)
        if fresh is None:
            continue
        check.compared += 1
        stored = np.frombuffer(row.vector, dtype="<f4")
        cosine = float(stored @ fresh)
        if not cosine >= RECOMPUTE_MIN_COSINE:
            blob = bytes(row.vector)
            check.mismatches.append(
                EmbeddingFinding(row.id, row.face_id, model.row_id, [RECOMPUTE_MISMATCH], model.row_id,
                                 row.checksum, embedding_checksum(model.row_id, blob), cosine)
            )
    return check


# ---- repair -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unrepaired:
    """A face whose embedding (or photo) could not be repaired, and why."""

    face_id: int
    embedding_id: int | None
    reason: str  # MODEL_NOT_LOADABLE, PHOTO_MISSING, PHOTO_DAMAGED, PHOTO_UNDECODABLE, NO_FACE_AT_LANDMARKS
    message: str


@dataclass
class RepairReport:
    repaired: list[EmbeddingFinding] = field(default_factory=list)
    unrepaired: list[Unrepaired] = field(default_factory=list)
    #: rows changed by someone else between the check and the repair: left alone (check again)
    changed_meanwhile: int = 0
    audit_seq: int | None = None

    def to_dict(self, keys: dict[int, str]) -> dict[str, Any]:
        return {
            "repaired": [f.to_dict(keys) for f in self.repaired],
            "unrepaired": [u.__dict__ for u in self.unrepaired],
            "changed_meanwhile": self.changed_meanwhile,
            "audit_seq": self.audit_seq,
        }


class _NothingRepaired(Exception):
    pass


def repair_embeddings(
    settings: Settings,
    db: Database,
    media: MediaStore,
    findings: Sequence[EmbeddingFinding],
    model: LoadedModel | None,
    *,
    why_not_loadable: str | None = None,
    keys: dict[int, str] | None = None,
    actor: Actor = VERIFY_ACTOR,
    bar: BarFactory = no_bar,
) -> RepairReport:
    """Embed every finding's face again with its model and write the vectors (module docstring)."""
    keys = keys if keys is not None else {i: m.key for i, m in _models(db).items()}
    report = RepairReport()
    todo: list[EmbeddingFinding] = []
    for finding in findings:
        if model is not None and finding.source_model_id == model.row_id:
            todo.append(finding)
            continue
        key = keys.get(finding.source_model_id, str(finding.source_model_id))
        why = f" ({why_not_loadable})" if why_not_loadable and model is None else ""
        message = f"cannot repair: model {key} not loadable{why}"
        report.unrepaired.append(
            Unrepaired(finding.face_id, finding.embedding_id, MODEL_NOT_LOADABLE, message)
        )
    if not todo:
        return report
    assert model is not None
    refs = _face_refs(db, [f.face_id for f in todo])
    vectors, failed = embed_from_photos(
        model.pipeline, media, list(refs.values()), max_pixels=settings.max_image_pixels, bar=bar
    )
    for finding in todo:
        if finding.face_id not in refs:
            report.changed_meanwhile += 1  # the face was removed since the check: nothing to repair
            continue
        reason = failed.get(finding.face_id)
        if reason is not None:
            report.unrepaired.append(Unrepaired(finding.face_id, finding.embedding_id, reason,
                                                f"cannot repair: {_REASON_WORDS[reason]}"))
    writable = [f for f in todo if f.face_id in vectors]
    if writable:
        _write_repairs(db, actor, model, writable, vectors, keys, report)
    return report


def _write_repairs(
    db: Database,
    actor: Actor,
    model: LoadedModel,
    findings: list[EmbeddingFinding],
    vectors: dict[int, np.ndarray],
    keys: dict[int, str],
    report: RepairReport,
) -> None:
    """One unit of work, one audit event: the new vectors, into rows still as they were judged."""
    try:
        with db.unit_of_work(actor) as uow:
            session = uow.session
            ids = [f.embedding_id for f in findings]
            rows: dict[int, Embedding] = {}
            for start in range(0, len(ids), _ID_CHUNK):
                query = select(Embedding).where(Embedding.id.in_(ids[start : start + _ID_CHUNK]))
                rows.update({row.id: row for row in session.scalars(query.with_for_update())})
            repaired: list[EmbeddingFinding] = []
            for finding in findings:
                row = rows.get(finding.embedding_id)
                unchanged = (
                    row is not None
                    and row.model_id == finding.model_id
                    and row.checksum == finding.stored_checksum
                    and embedding_checksum(row.model_id, row.vector) == finding.seen_checksum
                )
                if unchanged and row.model_id != model.row_id:  # a moved row goes back to its model
                    unchanged = session.scalar(
                        select(Embedding.id).where(
                            Embedding.face_id == row.face_id, Embedding.model_id == model.row_id
                        )
                    ) is None
                if not unchanged:
                    report.changed_meanwhile += 1
                    continue
                blob = np.asarray(vectors[finding.face_id], dtype="<f4").tobytes()
                row.model_id = model.row_id
                row.vector = blob
                row.checksum = embedding_checksum(model.row_id, blob)
                repaired.append(finding)
            if not repaired:
                raise _NothingRepaired
            session.flush()
            counts = Counter(p for f in repaired for p in f.problems)
            event = uow.audit(
                REPAIR_ACTION,
                target_type="embeddings",
                after={
                    "repaired": len(repaired),
                    "problems": {p: counts[p] for p in PROBLEMS if counts[p]},
                    "model": model.key,
                    "moved_back_from": sorted({keys.get(f.model_id, str(f.model_id)) for f in repaired
                                               if f.model_id != model.row_id}),
                },
                face_ids=[f.face_id for f in repaired],
            )
    except _NothingRepaired:
        return
    report.repaired = repaired
    report.audit_seq = event.seq
    log.info("integrity: repaired %d embedding(s) of %s (audit seq %s)", len(repaired), model.key, event.seq)


# ---- indexes ----------------------------------------------------------------------------------------


@dataclass
class IndexCheck:
    model_key: str
    loaded: str
    clean: bool
    summary: str


def check_indexes(settings: Settings, db: Database, *, save: Collection[str] = ()) -> list[IndexCheck]:
    """Each registered embedding model's index (snapshot + catch-up) against a rebuild from the DB.

    Models in `save` whose snapshot exists get it rewritten once caught up (after a repair: the
    snapshot then holds the repaired vectors instead of waiting for a server to replay the event).
    """
    with db.session() as session:
        models = session.execute(
            select(EmbeddingModel.key, EmbeddingModel.dim).order_by(EmbeddingModel.id)
        ).all()
    if not models:
        return []
    from childface.services.gallery import Gallery  # late: loads torch, which a media-only check skips

    checks = []
    for key, dim in models:
        gallery = Gallery(db=db, settings=settings, model_key=key, dim=dim)
        loaded = gallery.start()
        differences = gallery.check()
        if key in save and gallery.path.exists():
            gallery.save()
        checks.append(IndexCheck(key, loaded, differences.clean, differences.summary()))
    return checks


# ---- verify -----------------------------------------------------------------------------------------


@dataclass
class VerifyReport:
    media: MediaScan
    content_mismatches: list[str]
    indexes: list[IndexCheck]
    leftovers: recovery.RecoveryReport
    embeddings: EmbeddingScan = field(default_factory=EmbeddingScan)
    recompute: RecomputeCheck = field(default_factory=RecomputeCheck)
    repair: RepairReport | None = None

    def embedding_findings(self) -> list[EmbeddingFinding]:
        return self.embeddings.findings + self.recompute.mismatches

    def _counts(self, skip_repaired: bool) -> dict[str, int]:
        repaired = {f.embedding_id for f in self.repair.repaired} if skip_repaired and self.repair else set()
        problems = Counter(
            p for f in self.embedding_findings() if f.embedding_id not in repaired for p in f.problems
        )
        counts = {
            "files_without_rows": len(self.media.files_without_rows),
            "unexpected_files": len(self.media.unexpected_files),
            "rows_without_files": len(self.media.rows_without_files),
            "content_mismatches": len(self.content_mismatches),
            **{f"embeddings_{p}": problems[p] for p in PROBLEMS},
            "indexes_differing": sum(not check.clean for check in self.indexes),
            "temp_files": len(self.leftovers.temp_files),
            "import_folders": len(self.leftovers.import_folders),
            "journal_entries": self.leftovers.journal_entries,
            "stuck_import_runs": len(self.leftovers.runs_failed),
        }
        return {kind: n for kind, n in counts.items() if n}

    @property
    def findings(self) -> dict[str, int]:
        """Count per kind of problem found (zero counts left out)."""
        return self._counts(skip_repaired=False)

    @property
    def remaining(self) -> dict[str, int]:
        """The findings a repair did not fix (all of them without a repair); indexes as checked after it."""
        return self._counts(skip_repaired=True)

    @property
    def clean(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, object]:
        keys = self.embeddings.model_keys
        return {
            "clean": self.clean,
            "findings": self.findings,
            "remaining": self.remaining,
            "photo_files": len(self.media.photo_files),
            "in_flight_writes": self.media.in_flight,
            "files_without_rows": self.media.files_without_rows,
            "unexpected_files": self.media.unexpected_files,
            "rows_without_files": [{"image_id": i, "path": p} for i, p in self.media.rows_without_files],
            "content_mismatches": self.content_mismatches,
            "embeddings": {
                "checked": self.embeddings.checked,
                "findings": [f.to_dict(keys) for f in self.embeddings.findings],
            },
            "recompute": self.recompute.to_dict(keys),
            "repair": None if self.repair is None else self.repair.to_dict(keys),
            "indexes": [check.__dict__ for check in self.indexes],
            "temp_files": self.leftovers.temp_files,
            "import_folders": self.leftovers.import_folders,
            "journal_entries": self.leftovers.journal_entries,
            "stuck_import_runs": self.leftovers.runs_failed,
        }


def verify(
    settings: Settings,
    db: Database,
    media: MediaStore,
    *,
    progress: Progress = _no_progress,
    bar: BarFactory = no_bar,
    repair: bool = False,
    sample: int | None = None,
    actor: Actor = VERIFY_ACTOR,
) -> VerifyReport:
    """Check everything listed in the module docstring; with `repair`, repair the embeddings too.

    Without `repair` it changes nothing (except the index's memory). `sample` overrides
    `settings.verify_recompute_sample`. The model is loaded only when there is something to
    compute: a sample of a non-empty gallery, or a repair.
    """
    scan = scan_media(db, media, pending_grace_s=settings.pending_write_grace_s)
    mismatches = content_mismatches(media, scan.photo_files, progress)
    leftovers = recovery.recover(settings=settings, db=db, media=media, apply=False)
    leftovers.journal_entries = len(
        file_journal.unsettled(
            db, pending_grace_s=settings.pending_write_grace_s, removed_older_than_s=REMOVED_SETTLE_S
        )
    )
    embeddings = scan_embeddings(db, bar=bar)
    size = settings.verify_recompute_sample if sample is None else sample
    wants_sample = size > 0 and sum(embeddings.checked.values()) > 0
    model, why = (None, None)
    if wants_sample or (repair and embeddings.findings):
        model, why = loadable_model(settings, db)
    if not wants_sample:
        recompute = RecomputeCheck(not_run="sample size 0" if size <= 0 else "no embeddings")
    elif model is None:
        recompute = RecomputeCheck(not_run=why)
    else:
        exclude = [f.embedding_id for f in embeddings.findings]
        recompute = recompute_sample(settings, db, media, model, size, exclude=exclude, bar=bar)
    report = VerifyReport(scan, mismatches, [], leftovers, embeddings, recompute)
    touched: set[str] = set()
    if repair:
        report.repair = repair_embeddings(
            settings, db, media, report.embedding_findings(), model, why_not_loadable=why,
            keys=embeddings.model_keys, actor=actor, bar=bar,
        )
        report.repair.unrepaired += _faces_on_lost_photos(db, report)
        if report.repair.repaired and model is not None:
            touched.add(model.key)
    report.indexes = check_indexes(settings, db, save=touched)
    return report


def _faces_on_lost_photos(db: Database, report: VerifyReport) -> list[Unrepaired]:
    """Faces whose photo is missing or damaged (not listed yet): nothing can be computed from it."""
    assert report.repair is not None
    listed = {u.face_id for u in report.repair.unrepaired}
    lost = {path: PHOTO_MISSING for _, path in report.media.rows_without_files}
    lost.update({path: PHOTO_DAMAGED for path in report.content_mismatches})
    out: list[Unrepaired] = []
    paths = sorted(lost)
    with db.session() as session:
        for start in range(0, len(paths), _ID_CHUNK):
            rows = session.execute(
                select(Face.id, Image.path)
                .join(Image, Image.id == Face.image_id)
                .where(Image.path.in_(paths[start : start + _ID_CHUNK]))
                .order_by(Face.id)
            ).all()
            for face_id, path in rows:
                if face_id not in listed:
                    reason = lost[path]
                    out.append(Unrepaired(face_id, None, reason, f"cannot repair: {_REASON_WORDS[reason]}"))
    return out


# ---- the start-up check -----------------------------------------------------------------------------


@dataclass
class QuickReport:
    """The cheap checks: embeddings failing checksum, length or norm; rows without files; index count."""

    corrupt: int = 0  # embeddings with a problem other than `unchecked`
    unchecked: int = 0  # embeddings with a NULL checksum
    missing_photos: int = 0
    index_count: int | None = None  # faces in the served index
    expected_index_count: int | None = None  # indexable faces in the DB whose embedding is intact

    @property
    def ok(self) -> bool:
        return not (self.corrupt or self.unchecked or self.missing_photos) and self.index_count == (
            self.expected_index_count
        )

    def message(self) -> str:
        """"ok", or the problems in one line with what to run."""
        if self.ok:
            return "ok"
        parts = []
        if self.corrupt or self.unchecked or self.missing_photos:
            unchecked = f", {self.unchecked} unchecked embedding(s)" if self.unchecked else ""
            parts.append(f"{self.corrupt} corrupt embedding(s){unchecked}, {self.missing_photos} missing "
                         "photo(s): run childface verify --repair")
        if self.index_count != self.expected_index_count:
            parts.append(f"the index holds {self.index_count} face(s), the database "
                         f"{self.expected_index_count}: run childface verify")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {**self.__dict__, "ok": self.ok, "message": self.message()}


def quick_check(
    db: Database,
    media: MediaStore,
    *,
    model_ids: Collection[int] | None = None,
    gallery: Gallery | None = None,
) -> QuickReport:
    """The start-up checks (module docstring) on `model_ids`' embeddings (all when None); with a
    `gallery`, its face count against the DB's indexable faces whose embedding is intact."""
    scan = scan_embeddings(db, model_ids=model_ids)
    report = QuickReport(
        corrupt=sum(1 for f in scan.findings if f.problems != [UNCHECKED]),
        unchecked=sum(1 for f in scan.findings if f.problems == [UNCHECKED]),
        missing_photos=len(missing_photo_rows(db, media)),
    )
    if gallery is not None:
        excluded = [f.face_id for f in scan.findings if f.problems != [UNCHECKED]]
        for _ in range(3):  # writes between the two counts: catch up and count again
            gallery.catch_up()
            report.expected_index_count = _indexable_count(db, gallery, excluded)
            gallery.catch_up()
            report.index_count = gallery.count
            if report.index_count == report.expected_index_count:
                break
            time.sleep(0.2)
    return report


def doctor_check(db: Database, media: MediaStore) -> str:
    """`childface doctor`'s integrity line: `quick_check` of the current model's embeddings (every
    model's when none is current yet), without an index (doctor loads no model)."""
    with db.session() as session:
        current = session.scalar(select(EmbeddingModel.id).where(EmbeddingModel.state == ModelState.current))
    return quick_check(db, media, model_ids=None if current is None else [current]).message()


def _indexable_count(db: Database, gallery: Gallery, excluded: Sequence[int]) -> int:
    from childface.services.gallery import indexable_query

    with db.session() as session:
        model_row = session.scalar(select(EmbeddingModel.id).where(EmbeddingModel.key == gallery.model_key))
        if model_row is None:
            return 0
        query = indexable_query(model_row, vectors=False)
        total = int(session.scalar(query.with_only_columns(func.count())) or 0)
        left_out = 0
        for start in range(0, len(excluded), _ID_CHUNK):
            chunk = excluded[start : start + _ID_CHUNK]
            left_out += int(
                session.scalar(query.where(Face.id.in_(chunk)).with_only_columns(func.count())) or 0
            )
    return total - left_out


class StartupCheck:
    """`quick_check` run off the request path, and its state for `/readyz` (module docstring).

    `state()`: "not checked" before `start`, "checking" while it runs, then `QuickReport.message()`
    (or "check failed: ..."). A deployment found damaged is checked again when a repair is
    recorded in the audit trail (by any process) or RECHECK_S after the last check.
    """

    RECHECK_S = 300.0

    def __init__(self, run: Callable[[], QuickReport], *, spawn: Spawn | None = None) -> None:
        """`run` does the check; `spawn(name, target)` starts `target(stop_event)` in a thread (the
        runtime's, which its `close` waits for); by default a daemon thread of our own."""
        self._run = run
        self._spawn = spawn or _spawn_daemon
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state = "not checked"
        self._checked_at = 0.0
        self._repairs_seen: int | None = None
        self.report: QuickReport | None = None

    def start(self, db: Database | None = None) -> None:
        """Run the check in a background thread (unless one is running)."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if db is not None:
                self._repairs_seen = _last_repair(db)
            self._state = "checking"
            self._thread = self._spawn("integrity-check", self._check)

    def _check(self, _stop: threading.Event | None = None) -> None:
        started = time.perf_counter()
        try:
            report = self._run()
            state = report.message()
        except Exception as exc:  # noqa: BLE001 - a failed check is reported, not raised into a thread
            log.exception("integrity check failed")
            report, state = None, f"check failed: {type(exc).__name__}"
        with self._lock:
            self.report, self._state, self._checked_at = report, state, time.monotonic()
        level = logging.INFO if state == "ok" else logging.WARNING
        log.log(level, "integrity check (%.2f s): %s", time.perf_counter() - started, state)

    def state(self, db: Database | None = None) -> str:
        """The check's state; with `db`, a damaged deployment's check is started again when due."""
        with self._lock:
            state, running = self._state, self._thread is not None and self._thread.is_alive()
        if db is not None and not running and state not in ("ok", "not checked"):
            repairs = _last_repair(db)
            if repairs != self._repairs_seen or time.monotonic() - self._checked_at >= self.RECHECK_S:
                self.start(db)
                return "checking"
        return state

    def wait(self, timeout: float | None = None) -> None:
        """Until the running check (if any) has finished."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


Spawn = Callable[[str, Callable[[threading.Event], None]], threading.Thread]


def _spawn_daemon(name: str, target: Callable[[threading.Event], None]) -> threading.Thread:
    thread = threading.Thread(target=target, args=(threading.Event(),), name=name, daemon=True)
    thread.start()
    return thread


def _last_repair(db: Database) -> int:
    with db.session() as session:
        return int(session.scalar(select(func.max(AuditEvent.seq)).where(AuditEvent.action == REPAIR_ACTION))
                   or 0)


# ---- gc-media ---------------------------------------------------------------------------------------


@dataclass
class GarbageReport:
    files_without_rows: list[str]
    too_young: list[str]  # unreferenced, but younger than the pending-write grace: left alone
    rows_without_files: list[tuple[int, str]]
    unexpected_files: list[str]
    deleted: int = 0
    applied: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "applied": self.applied,
            "files_without_rows": self.files_without_rows,
            "left_alone_too_young": self.too_young,
            "deleted": self.deleted,
            "rows_without_files": [{"image_id": i, "path": p} for i, p in self.rows_without_files],
            "unexpected_files": self.unexpected_files,
        }


def collect_garbage(settings: Settings, db: Database, media: MediaStore, *, apply: bool) -> GarbageReport:
    """Find photo files no row refers to (and rows without files); with `apply`, delete those files
    that are older than the pending-write grace, through the file journal's sweep."""
    scan = scan_media(db, media, pending_grace_s=settings.pending_write_grace_s)
    now = datetime.now(UTC)
    old, young = [], []
    for relative in scan.files_without_rows:
        try:
            age = now.timestamp() - media.absolute(relative).stat().st_mtime
        except FileNotFoundError:
            continue
        (old if age >= settings.pending_write_grace_s else young).append(relative)
    report = GarbageReport(old, young, scan.rows_without_files, scan.unexpected_files, applied=apply)
    if apply and old:
        files = [(PurePosixPath(relative).stem, relative) for relative in old]
        with db.transaction() as session:
            file_journal.journal_deletions(session, files)
        report.deleted = file_journal.sweep(
            db=db, media=media, shas=[sha for sha, _ in files], pending_grace_s=settings.pending_write_grace_s
        )
    return report
