"""The searchable gallery of one embedding model: a vector index kept true to the DB.

The relational DB is the truth (DESIGN.md invariant 1); the index is derived
from it and this module is its only writer. A face is *indexable* — present in
the index under its face id — exactly when

    review_state == enrolled, retired_at is null (the template policy has not
    retired it: services/templates.py), child_id is set, that child's status is
    active, and the face has an embedding of this gallery's model.

An embedding that is damaged (its checksum fails, or it is not a unit vector of
the model's dimension) is left out and logged: a corrupt vector is never
searched (`childface verify --repair`, services/integrity.py).

Change feed
-----------
Every audit event lists in `face_ids` the faces whose indexability its change
may have touched (services must do so for face add/remove/reassign/review,
child archive/restore/erase/merge and imports). `catch_up()` reads the events
after its watermark, re-reads each listed face from the DB *as it is now* and
upserts or removes it. Applying a face is idempotent and order-free, so
replaying an event twice, or late, converges to the DB.

Out-of-order commits (PostgreSQL)
---------------------------------
`seq` is taken from a sequence at insert time, so a transaction holding seq 10
may commit after seq 11 is visible; a plain "max seq seen" watermark would skip
10 forever. The gallery therefore tracks *gaps*: seqs below the highest seen
that were not visible yet. Each catch-up re-reads the gaps; a gap is closed
when its event shows up, or dropped as a rolled-back insert once every
transaction that was running when the gap was first seen has ended (PostgreSQL
`pg_current_snapshot()` xmin passed the xmax recorded then) and a grace period
has passed (a transaction takes its xid an instant after its seq). On SQLite
writers are serialised, so seq order is commit order and gaps cannot arise.
The watermark saved with a snapshot is the *safe* one: just below the oldest
open gap, so a restart replays every event that may not have been applied.

Erasure
-------
An erasure event (`ERASURE_ACTION`) takes effect in a process the moment that
process applies it: its faces are *purged* (vectors overwritten in memory, not
just hidden) and, when this gallery has a snapshot on disk, the snapshot is
rewritten at once instead of at the next autosave. Every process applies the
event before its next read (`Runtime.current_gallery`), so each one scrubs its
own memory and snapshot; one that was down replays the event at start-up.
Snapshots of other embedding models in the same folder (a model served by
another process, or by none since a model change) are rewritten without the
faces too, as the DB no longer has any embedding of them.

Reads happen in one consistent snapshot (REPEATABLE READ on PostgreSQL; one
read transaction on SQLite WAL), so events and faces are seen as of one moment.

Snapshots
---------
`save()` writes the index atomically (temp file + rename) to
`<index_dir>/<model key>.cfidx`. A running API saves from a background thread
(`start_autosave`: every `index_snapshot_interval_s` when something changed,
and on `close()`), never on the request path. `start()` loads the snapshot and
catches up from its watermark; a missing, corrupt or other-model snapshot
means a rebuild from the DB. A crash at any point (even mid-save) is safe: the
old snapshot stays valid and start-up replays the rest.

Searches are child-level (`ChildCandidate`): candidate children come from the
face index, then each is scored exactly over all of its templates with the
configured aggregation (`max`, or `mean2`: mean of the best two), optionally
with each template weighted by how recent its photo is (`ChildIndex`,
`template_recency_half_life_days`).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from sqlalchemy import Select, and_, func, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from childface.config import Settings
from childface.db.models import (
    AuditEvent,
    Child,
    ChildStatus,
    Embedding,
    EmbeddingModel,
    Face,
    Image,
    ReviewState,
    UtcDateTime,
)
from childface.db.session import Database
from childface.index import (
    FaissIndex,
    SnapshotError,
    VectorIndex,
    create_index,
    load_index,
    purge_snapshot,
    snapshot_path,
)
from childface.index.base import RWLock
from childface.index.slots import ABSENT, SlotTable
from childface.services.erasure import ERASURE_ACTION

log = logging.getLogger(__name__)

ChildScore = Literal["max", "mean2"]

#: faces re-read per query while catching up (bounded IN lists)
_CHUNK = 500
#: faces mapped or unmapped after which a ChildIndex rebuilds its child -> faces arrays
_CSR_LOG_MIN = 4096
#: most faces one child-level search asks the face index for
_MAX_FACES_PER_SEARCH = 4096
#: names of fetch_batches' server-side cursors, unique within a connection
_CURSOR_NUMBERS = itertools.count()
#: seconds the background thread waits before a due store switch (HNSW build)
_SWITCH_DELAY_S = 0.5
#: rows fetched per batch when reading faces in bulk (rebuild, adopt, check)
_READ_BATCH = 20_000
#: gap ranges re-read per query
_GAP_CHUNK = 100
#: default seconds a gap stays open after its transactions ended (see module docstring)
GAP_GRACE_S = 10.0
#: how long a rebuild waits for transactions running at its start to end before it
#: falls back to tracking every gap in the whole feed
REBUILD_QUIESCE_S = 10.0


# ---- embedding models ------------------------------------------------------


def ensure_embedding_model(
    db: Database, *, key: str, name: str, weights_sha256: str, dim: int, spec: dict[str, Any] | None = None
) -> int:
    """The `embedding_models` row id for this model key, created on first use.

    `spec` (how to load the embedder, services/embedding_models.py) is recorded on a
    row that has none yet. Idempotent and safe under concurrent callers: a racing
    insert loses on the unique key and reads the winner's row.
    """
    for _ in range(2):
        try:
            with db.transaction() as session:
                row = session.scalar(select(EmbeddingModel).where(EmbeddingModel.key == key))
                if row is None:
                    row = EmbeddingModel(
                        key=key, name=name, weights_sha256=weights_sha256, dim=dim, spec=spec
                    )
                    session.add(row)
                    session.flush()
                elif row.spec is None and spec is not None:
                    row.spec = spec
                if row.dim != dim:
                    raise ValueError(f"embedding model {key!r} is registered with dim {row.dim}, not {dim}")
                return row.id
        except IntegrityError:
            continue  # another process inserted the same key first: read its row
    raise RuntimeError(f"could not register embedding model {key!r}")


# ---- results ---------------------------------------------------------------


@dataclass(frozen=True)
class ChildCandidate:
    child_id: int
    #: child-level cosine similarity (aggregated over the child's templates)
    score: float
    #: the child's best-matching template
    face_id: int
    n_templates: int


@dataclass
class IndexDifferences:
    """What a rebuild from the DB would change in the index."""

    missing: list[int] = field(default_factory=list)  # indexable in the DB, absent from the index
    extra: list[int] = field(default_factory=list)  # in the index, not indexable in the DB
    mismatched: list[int] = field(default_factory=list)  # present in both, other vector or child
    db_count: int = 0
    index_count: int = 0

    @property
    def clean(self) -> bool:
        return not (self.missing or self.extra or self.mismatched)

    def summary(self) -> str:
        def ids(values: list[int]) -> str:
            head = ", ".join(map(str, values[:20]))
            return head + (f", ... ({len(values)} in all)" if len(values) > 20 else "")

        lines = [f"DB indexable faces: {self.db_count}, index entries: {self.index_count}"]
        for label, values in (
            ("missing from the index", self.missing),
            ("extra in the index", self.extra),
            ("vector or child differs", self.mismatched),
        ):
            if values:
                lines.append(f"{label}: {ids(values)}")
        lines.append("index equals the DB" if self.clean else "index differs from the DB")
        return "\n".join(lines)


# ---- child-level search over one face index ---------------------------------


class ChildIndex:
    """A face-vector index plus the face -> child map: child-level search.

    The maps are numpy arrays, not dicts of sets (a million faces would cost more
    in Python objects than in vectors): face -> child is a `SlotTable`, child ->
    faces a CSR-like pair of arrays sorted by child (`_csr_child`, `_csr_face`)
    plus a small log of the faces mapped since it was built. A face's entry is
    trusted only where `face -> child` still agrees, so removals and moves need
    no CSR edit; the CSR is rebuilt once the log (or churn) grows past a fraction
    of the gallery.

    Not thread-safe by itself; `Gallery` guards it. Evaluation uses it directly
    as an in-memory gallery.

    `recency_half_life_days` (Settings.template_recency_half_life_days; None: off)
    weighs each template by how recent its photo is, relative to the child's
    newest template: with w = 0.5 ** (days older than the newest / half-life), a
    template's similarity s counts as w*s + (1-w)*s_newest (s_newest: the probe's
    similarity to the child's newest template), before `max` / `mean2`. A blend
    of two cosines stays a cosine between the child's worst and best template
    similarities (with `max`: never above the plain score), and equals the plain
    score when all templates are of one age, so the thresholds keep their
    meaning. The photo days live in a second `SlotTable` (`set_taken`, face id
    -> day); a face without one weighs 1.
    """

    def __init__(
        self,
        index: VectorIndex,
        child_score: ChildScore = "max",
        recency_half_life_days: float | None = None,
    ) -> None:
        self.index = index
        self.child_score: ChildScore = child_score
        self.recency_half_life_days = recency_half_life_days
        self._taken_day = SlotTable()  # face id -> day its photo was taken (days since 1970), recency only
        self._child_of = SlotTable()  # face id -> child id
        self._n_faces = SlotTable()  # child id -> number of mapped faces
        self._max_templates: int | None = 0
        self._csr_child = np.empty(0, dtype=np.int64)
        self._csr_face = np.empty(0, dtype=np.int64)
        self._recent: dict[int, list[int]] = {}  # child -> faces mapped since the CSR was built
        self._churn = 0  # faces mapped or unmapped since then

    @property
    def dim(self) -> int:
        return self.index.dim

    def owners(self, face_ids: np.ndarray) -> np.ndarray:
        """The child of each face (-1 where unmapped)."""
        return self._child_of.get(np.asarray(face_ids, dtype=np.int64))

    def faces(self) -> tuple[np.ndarray, np.ndarray]:
        """Every mapped face id (ascending) and its child."""
        face_ids = self._child_of.keys()
        return face_ids, self._child_of.get(face_ids)

    def upsert(self, face_ids: Sequence[int], child_ids: Sequence[int], vectors: np.ndarray) -> None:
        if not len(face_ids):
            return
        self.index.add(np.asarray(face_ids, dtype=np.int64), vectors)
        self.map_faces(face_ids, child_ids)

    def load(self, face_ids: np.ndarray, child_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Fill an empty gallery in one go; the index may take `vectors` over without a copy."""
        if len(face_ids):
            self.index.bulk_load(np.asarray(face_ids, dtype=np.int64), vectors)
            self.map_faces(face_ids, child_ids)

    def map_faces(self, face_ids: Sequence[int] | np.ndarray, child_ids: Sequence[int] | np.ndarray) -> None:
        """Record (or change) the child of faces already in the index."""
        faces = np.asarray(face_ids, dtype=np.int64)
        children = np.asarray(child_ids, dtype=np.int64)
        if len(faces) != len(children):
            raise ValueError(f"{len(faces)} faces for {len(children)} children")
        self._unmap(faces)
        self._child_of.set(faces, children)
        self._count(children, +1)
        self._log(faces, children)

    def set_taken(self, face_ids: Sequence[int] | np.ndarray, days: Sequence[int] | np.ndarray) -> None:
        """Record the day each face's photo was taken (days since 1970-01-01), for recency weighting."""
        self._taken_day.set(np.asarray(face_ids, dtype=np.int64), np.asarray(days, dtype=np.int64))

    def remove(self, face_ids: Iterable[int], *, purge: bool = False) -> int:
        """Take faces out; `purge` also overwrites their vectors (erasure: see `VectorIndex.purge`).

        A purge reaches faces that are no longer present too: an index may still hold the
        vector of a face it removed earlier (an archived child's, in an HNSW graph).
        """
        face_ids = list(face_ids)
        present = [f for f in face_ids if self.index.contains(f)]
        if purge and face_ids:
            self.index.purge(np.asarray(face_ids, dtype=np.int64))
        elif present:
            self.index.remove(np.asarray(present, dtype=np.int64))
        if present:
            self._unmap(np.asarray(present, dtype=np.int64))
        return len(present)

    def _unmap(self, faces: np.ndarray) -> None:
        old = self._child_of.get(faces)
        mapped = old != ABSENT
        if mapped.any():
            self._child_of.clear(faces[mapped])
            self._count(old[mapped], -1)
            self._churn += int(mapped.sum())

    def _count(self, children: np.ndarray, delta: int) -> None:
        uniq, times = np.unique(children, return_counts=True)
        current = self._n_faces.get(uniq)
        current[current == ABSENT] = 0
        new = current + delta * times
        self._n_faces.clear(uniq[new <= 0])
        self._n_faces.set(uniq[new > 0], new[new > 0])
        self._max_templates = None

    def _log(self, faces: np.ndarray, children: np.ndarray) -> None:
        self._churn += len(faces)
        if self._churn > max(_CSR_LOG_MIN, len(self._csr_face) // 8):
            self._build_csr()
            return
        for face_id, child_id in zip(faces.tolist(), children.tolist(), strict=True):
            self._recent.setdefault(child_id, []).append(face_id)

    def _build_csr(self) -> None:
        faces, children = self.faces()
        order = np.argsort(children, kind="stable")  # by child, then face id (faces() is ascending)
        self._csr_child, self._csr_face = children[order], faces[order]
        self._recent.clear()
        self._churn = 0

    def _faces_of(self, children: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(face ids, owner) of every face of these children, grouped by child, face ids ascending."""
        lo = np.searchsorted(self._csr_child, children, side="left")
        hi = np.searchsorted(self._csr_child, children, side="right")
        lengths = hi - lo
        total = int(lengths.sum())
        starts = np.repeat(lo - np.cumsum(lengths) + lengths, lengths)
        positions = starts + np.arange(total)
        faces, owners = self._csr_face[positions], self._csr_child[positions]
        if self._recent:
            extra = [(f, c) for c in children.tolist() for f in self._recent.get(c, ())]
            if extra:
                more = np.asarray(extra, dtype=np.int64)
                faces = np.concatenate([faces, more[:, 0]])
                owners = np.concatenate([owners, more[:, 1]])
        # an entry counts only while the face still belongs to that child (removals, moves)
        current = self._child_of.get(faces) == owners
        faces, owners = faces[current], owners[current]
        pairs = np.unique(np.stack([owners, faces], axis=1), axis=0)  # dedupe, sort by child then face
        return pairs[:, 1], pairs[:, 0]

    def max_templates(self) -> int:
        if self._max_templates is None:
            self._max_templates = self._n_faces.max_value()
        return self._max_templates

    def child_scores(self, query: np.ndarray, child_ids: Iterable[int]) -> list[ChildCandidate]:
        """Exact child-level scores of one unit query against every template of these children.

        One gather of all the candidates' vectors and one matrix-vector product; the
        per-child max / mean of the best two are segment reductions over the sorted sims.
        """
        children = np.fromiter(dict.fromkeys(child_ids), dtype=np.int64)
        if not len(children):
            return []
        faces, owners = self._faces_of(children)
        if not len(faces):
            return []
        sims = self.index.vectors_of(faces) @ np.asarray(query, dtype=np.float32)
        if self.recency_half_life_days is not None:
            sims = self._recency_weighted(faces, owners, sims, self.recency_half_life_days)
        # by child, best first, ties to the lower face id (faces come ascending within a child)
        order = np.lexsort((-sims, owners))
        faces, owners, sims = faces[order], owners[order], sims[order]
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        sizes = np.diff(np.r_[starts, len(owners)])
        best = sims[starts]
        score = best
        if self.child_score == "mean2":
            second = np.where(sizes > 1, sims[np.minimum(starts + 1, len(sims) - 1)], best)
            score = np.where(sizes > 1, (best + second) / np.float32(2.0), best)
        out = [
            ChildCandidate(int(c), float(s), int(f), int(n))
            for c, s, f, n in zip(owners[starts], score, faces[starts], sizes, strict=True)
        ]
        out.sort(key=lambda c: (-c.score, c.child_id))
        return out

    def _recency_weighted(
        self, faces: np.ndarray, owners: np.ndarray, sims: np.ndarray, half_life: float
    ) -> np.ndarray:
        """Each similarity blended toward the child's newest template's (see the class docstring).

        `faces` come grouped by child (`_faces_of`); segment reductions, no Python loop per face.
        """
        days = self._taken_day.get(faces)
        known = days != ABSENT
        if not known.any():
            return sims
        starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        segment = np.cumsum(np.r_[0, (owners[1:] != owners[:-1]).astype(np.int64)])
        dated = np.where(known, days, np.iinfo(np.int64).min)
        newest = np.maximum.reduceat(dated, starts)[segment]
        # the newest photo's similarity (the best of them when several share that day)
        at_newest = known & (dated == newest)
        newest_sim = np.maximum.reduceat(np.where(at_newest, sims, -np.inf), starts)[segment]
        age = np.where(known & np.isfinite(newest_sim), newest - dated, 0).astype(np.float64)
        weight = 0.5 ** (age / half_life)
        blended = weight * sims + (1.0 - weight) * np.where(np.isfinite(newest_sim), newest_sim, 0.0)
        return blended.astype(np.float32)

    def search(self, vectors: np.ndarray, k: int) -> list[list[ChildCandidate]]:
        """Top-k children per query row, best first: one face search, then exact child scores.

        Asking for k x (most templates of any child) faces guarantees k distinct
        children among them (capped at `_MAX_FACES_PER_SEARCH` for a pathological child).
        """
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        total = self.index.count
        if total == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        k_faces = min(total, max(4 * k, 16, min(k * self.max_templates(), _MAX_FACES_PER_SEARCH)))
        ids, _ = self.index.search(queries, k_faces)
        owners = self._child_of.get(np.where(ids >= 0, ids, 0))
        out = []
        for query, row, own in zip(queries, ids, owners, strict=True):
            candidates = own[(row >= 0) & (own != ABSENT)]
            out.append(self.child_scores(query, candidates.tolist())[:k])
        return out


# ---- the change-feed position ------------------------------------------------


@dataclass
class _Gap:
    lo: int  # first missing seq
    hi: int  # last missing seq (inclusive)
    seen_at: float  # time.monotonic() when first seen
    xmax: int | None  # PostgreSQL: pg_snapshot_xmax when first seen; None on SQLite


class FeedPosition:
    """Highest seq applied plus the open gaps below it (see the module docstring)."""

    def __init__(self, high: int = 0, grace_s: float = GAP_GRACE_S) -> None:
        self.high = high
        self.grace_s = grace_s
        self.gaps: list[_Gap] = []

    @property
    def safe_watermark(self) -> int:
        """Every event at or below this seq has been applied."""
        return min((g.lo for g in self.gaps), default=self.high + 1) - 1

    def add_gaps(self, ranges: Iterable[tuple[int, int]], xmax: int | None) -> None:
        now = time.monotonic()
        self.gaps.extend(_Gap(lo, hi, now, xmax) for lo, hi in ranges if lo <= hi)

    def advance(self, new_seqs: Sequence[int], xmax: int | None) -> None:
        """Record the seqs read above `high` (sorted ascending); the holes between become gaps."""
        ranges, expected = [], self.high + 1
        for seq in new_seqs:
            if seq > expected:
                ranges.append((expected, seq - 1))
            expected = seq + 1
        self.add_gaps(ranges, xmax)
        if new_seqs:
            self.high = max(self.high, new_seqs[-1])

    def fill(self, seqs: Iterable[int]) -> None:
        """These gap seqs have shown up: split them out of their ranges."""
        for seq in sorted(seqs):
            for i, gap in enumerate(self.gaps):
                if gap.lo <= seq <= gap.hi:
                    pieces = [
                        _Gap(lo, hi, gap.seen_at, gap.xmax)
                        for lo, hi in ((gap.lo, seq - 1), (seq + 1, gap.hi))
                        if lo <= hi
                    ]
                    self.gaps[i : i + 1] = pieces
                    break

    def expire(self, xmin_now: int | None) -> None:
        """Drop gaps whose transactions have all ended (they were rolled back)."""
        now = time.monotonic()

        def still_open(gap: _Gap) -> bool:
            if now - gap.seen_at < self.grace_s:
                return True
            # PostgreSQL: a transaction running when the gap was seen may still commit into it
            return gap.xmax is not None and xmin_now is not None and xmin_now < gap.xmax

        self.gaps = [g for g in self.gaps if still_open(g)]


# ---- the DB-backed gallery ---------------------------------------------------


def indexable_query(model_row: int | None, *, vectors: bool = True) -> Select:
    """Face id, child id (and vector) of every indexable face of one model: the indexability rule."""
    columns = (Face.id, Face.child_id, Embedding.vector) if vectors else (Face.id, Face.child_id)
    return (
        select(*columns)
        .join(Child, Child.id == Face.child_id)
        .join(Embedding, and_(Embedding.face_id == Face.id, Embedding.model_id == model_row))
        .where(
            Face.review_state == ReviewState.enrolled,
            Face.retired_at.is_(None),
            Child.status == ChildStatus.active,
        )
    )


def fetch_batches(session: Session, statement: Select) -> Iterator[list[tuple]]:
    """Rows of `statement` as the driver's plain tuples, `_READ_BATCH` at a time, in the
    session's transaction. A million ORM/Core row objects cost seconds; tuples do not.

    On PostgreSQL the cursor is a server-side (named) one: a plain psycopg cursor would load
    the whole result into this process before the first `fetchmany`."""
    connection = session.connection()
    sql = str(statement.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
    if connection.dialect.name == "postgresql":
        cursor = connection.connection.cursor(name=f"childface_read_{next(_CURSOR_NUMBERS)}")
    else:
        cursor = connection.connection.cursor()  # sqlite3 steps through the result as it is fetched
    try:
        cursor.execute(sql)
        while rows := cursor.fetchmany(_READ_BATCH):
            yield rows
    finally:
        cursor.close()


@dataclass(frozen=True)
class IndexableFaces:
    """Indexable faces as arrays: face ids ascending, their children, their (n, dim) unit vectors."""

    face_ids: np.ndarray
    child_ids: np.ndarray
    vectors: np.ndarray

    def __len__(self) -> int:
        return len(self.face_ids)


def read_indexable(
    session: Session, model_row: int | None, dim: int, face_ids: Sequence[int] | None = None
) -> IndexableFaces:
    """Indexable faces of one model (among `face_ids`; all when None), read in bulk.

    Rows come in batches; each batch's vectors are one `b"".join` + `np.frombuffer`
    with a vectorised shape and norm check, written into arrays sized by a count
    first, so a million faces cost no Python object per face beyond the DB row.
    A stored vector that is not a unit `dim`-d vector, or that fails its checksum (changed in the
    database, or moved from another model: `embedding_checksum`), is logged and left out: a corrupt
    embedding is never searched (`childface verify --repair` re-computes it). A NULL checksum
    (unchecked) is searched; `verify` reports it.
    """
    if model_row is None:
        return IndexableFaces(np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, dim), np.float32))
    query = indexable_query(model_row, vectors=True).add_columns(Embedding.checksum)
    if face_ids is not None:
        query = query.where(Face.id.in_(face_ids))
        expected = len(face_ids)
    else:
        counted = indexable_query(model_row, vectors=False).with_only_columns(func.count())
        expected = int(session.scalar(counted) or 0)
    ids = np.empty(expected, dtype=np.int64)
    children = np.empty(expected, dtype=np.int64)
    vectors = np.empty((expected, dim), dtype=np.float32)
    filled = 0
    for batch in fetch_batches(session, query.order_by(Face.id)):
        batch_ids, batch_children, blobs, checksums = zip(*batch, strict=True)
        sizes = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        good = sizes == dim * 4
        intact = checksums_hold(model_row, blobs, checksums)
        _log_left_out(np.asarray(batch_ids)[~intact], "fail their checksum")
        good &= intact
        block = np.frombuffer(b"".join(b for b, ok in zip(blobs, good, strict=True) if ok), dtype="<f4")
        block = block.reshape(-1, dim)
        unit = np.abs(np.linalg.norm(block, axis=1) - 1.0) <= 1e-3
        good[good] = unit
        _log_left_out(np.asarray(batch_ids)[~good & intact], f"are not unit {dim}-d vectors")
        n = int(good.sum())
        if filled + n > len(ids):  # rows committed after the count (SQLite outside a snapshot)
            grow = max(filled + n, 2 * len(ids))
            ids, children = np.resize(ids, grow), np.resize(children, grow)
            vectors = np.resize(vectors, (grow, dim))
        ids[filled : filled + n] = np.asarray(batch_ids, dtype=np.int64)[good]
        children[filled : filled + n] = np.asarray(batch_children, dtype=np.int64)[good]
        vectors[filled : filled + n] = block[unit]
        filled += n
    if filled < len(ids):
        ids, children, vectors = ids[:filled], children[:filled], vectors[:filled].copy()
    return IndexableFaces(ids, children, vectors)


def _log_left_out(face_ids: np.ndarray, why: str, shown: int = 20) -> None:
    """One line per batch, not per face: a damaged table may hold thousands of such rows."""
    if len(face_ids):
        more = f" and {len(face_ids) - shown} more" if len(face_ids) > shown else ""
        log.error("stored embeddings of %d face(s) %s; left out (childface verify --repair): %s%s",
                  len(face_ids), why, ", ".join(map(str, face_ids[:shown].tolist())), more)


def checksums_hold(model_row: int, blobs: Sequence[bytes], checksums: Sequence[str | None]) -> np.ndarray:
    """Per row: the stored checksum is NULL (unchecked) or equals `embedding_checksum(model_row, blob)`.

    One sha256 of the model prefix, copied per row: about a microsecond per 512-byte vector."""
    prefix = hashlib.sha256(b"%d:" % model_row)
    out = np.ones(len(blobs), dtype=bool)
    for i, (blob, checksum) in enumerate(zip(blobs, checksums, strict=True)):
        if checksum is not None:
            digest = prefix.copy()
            digest.update(blob)
            out[i] = digest.hexdigest() == checksum
    return out


def read_taken_days(session: Session, face_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(face ids, day each one's photo was taken: days since 1970-01-01) for these faces.

    The day is `images.taken_at`, else the photo's upload time (rows older than their
    `taken_at`). Many faces are read in one pass over every assigned face, a few by id.
    """
    wanted = np.unique(np.asarray(face_ids, dtype=np.int64))
    taken = func.coalesce(Image.taken_at, Image.created_at, type_=UtcDateTime())
    query = select(Face.id, taken).join(Image, Image.id == Face.image_id)
    if len(wanted) <= 4 * _CHUNK:
        rows = [
            row
            for i in range(0, len(wanted), _CHUNK)
            for row in session.execute(query.where(Face.id.in_(wanted[i : i + _CHUNK].tolist())))
        ]
    else:
        rows = [row for row in session.execute(query.where(Face.child_id.is_not(None)))]
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    days = np.fromiter((int(r[1].timestamp() // 86400) for r in rows), dtype=np.int64, count=len(rows))
    keep = np.isin(ids, wanted)
    return ids[keep], days[keep]


class Gallery:
    """The index of one embedding model, kept equal to the DB; child-level search.

    Thread-safe: searches run concurrently; `catch_up`, `rebuild` and `check`
    are serialised, and their index writes exclude searches only briefly.
    """

    def __init__(
        self,
        *,
        db: Database,
        settings: Settings,
        model_key: str,
        dim: int,
        gap_grace_s: float = GAP_GRACE_S,
        rebuild_quiesce_s: float = REBUILD_QUIESCE_S,
    ) -> None:
        self.db = db
        self.settings = settings
        self.model_key = model_key
        self.dim = dim
        self.path = snapshot_path(settings, model_key)
        self._grace_s = gap_grace_s
        self._quiesce_s = rebuild_quiesce_s
        self._position = FeedPosition(grace_s=gap_grace_s)
        self._children = self._child_index(create_index(settings, model_key, dim))
        self._model_row: int | None = None
        self._rw = RWLock()  # guards self._children: searches read, applying changes writes
        self._sync = threading.Lock()  # one catch-up / rebuild / check at a time
        # bumped by every change to the index; the snapshot is due when it differs from the saved one
        self._version = 0
        self._saved_version = 0
        # one snapshot write at a time: an older write finishing last must not bring erased vectors back
        self._save_lock = threading.Lock()
        self._autosave: threading.Thread | None = None
        self._stop = threading.Event()

    # --- state ---------------------------------------------------------------

    @property
    def count(self) -> int:
        return self._children.index.count

    @property
    def watermark(self) -> int:
        """Seq up to which every change is in the index (what a snapshot saves)."""
        return self._position.safe_watermark

    @property
    def open_gaps(self) -> int:
        return sum(g.hi - g.lo + 1 for g in self._position.gaps)

    # --- start-up --------------------------------------------------------------

    def start(self) -> str:
        """Load the snapshot and catch up, or rebuild from the DB; returns what happened."""
        try:
            index = load_index(self.settings, self.path, self.model_key, self.dim)
        except FileNotFoundError:
            reason = "no snapshot"
        except SnapshotError as exc:
            reason = f"snapshot unusable ({exc})"
        else:
            saved_at = index.watermark
            with self._sync:
                self._adopt(index)
            replayed = self.catch_up()
            log.info("index %s: loaded %d faces, replayed %d events", self.model_key, self.count, replayed)
            return f"loaded snapshot at seq {saved_at}, replayed {replayed} events"
        log.warning("index %s: %s, rebuilding from the DB", self.model_key, reason)
        self.rebuild()
        if self.path.exists():
            self.save()  # the unusable file may hold faces erased since: replace it now
        return f"{reason}: rebuilt {self.count} faces from the DB"

    def _adopt(self, index: VectorIndex) -> None:
        """Take a loaded snapshot; map its faces to their children as the DB has them now.

        Nothing is corrected here: the catch-up that follows applies the changes
        after the watermark, and whatever it leaves wrong `check()` reports. A face
        whose row or child is gone stays in the index, out of search results, until
        an event removes it.
        """
        children = self._child_index(index)
        present = index.ids()
        with self._read() as session:
            owners = select(Face.id, Face.child_id).where(Face.child_id.is_not(None))
            parts = [
                np.asarray(batch, dtype=np.int64).reshape(-1, 2) for batch in fetch_batches(session, owners)
            ]
        pairs = np.concatenate(parts) if parts else np.empty((0, 2), dtype=np.int64)
        # `present` is sorted: one binary search per face, then one mapping call for them all
        at = np.minimum(np.searchsorted(present, pairs[:, 0]), max(len(present) - 1, 0))
        held = present[at] == pairs[:, 0] if len(present) else np.zeros(len(pairs), dtype=bool)
        children.map_faces(pairs[held, 0], pairs[held, 1])
        if children.recency_half_life_days is not None:
            with self._read() as session:
                children.set_taken(*read_taken_days(session, pairs[held, 0]))
        position = FeedPosition(high=index.watermark, grace_s=self._grace_s)
        with self._rw.write():
            self._children, self._position = children, position

    def _child_index(self, index: VectorIndex) -> ChildIndex:
        return ChildIndex(index, self.settings.child_score, self.settings.template_recency_half_life_days)

    def _read_taken(self, session: Session, face_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Recency weighting only: when these faces' photos were taken (`read_taken_days`); else None."""
        if self.settings.template_recency_half_life_days is None or not len(face_ids):
            return None
        return read_taken_days(session, face_ids)

    # --- keeping up with the DB -----------------------------------------------------

    def catch_up(self) -> int:
        """Apply the audit events not yet applied; returns how many were read."""
        with self._sync, self._read() as session:
            return self._catch_up_in(session)

    def _catch_up_in(self, session: Session) -> int:
        xmin, xmax = self._horizon(session)
        position = self._position
        columns = (AuditEvent.seq, AuditEvent.action, AuditEvent.face_ids)
        new = session.execute(
            select(*columns).where(AuditEvent.seq > position.high).order_by(AuditEvent.seq)
        ).all()
        late: list[tuple[int, str, list[int] | None]] = []
        for i in range(0, len(position.gaps), _GAP_CHUNK):
            ranges = [AuditEvent.seq.between(g.lo, g.hi) for g in position.gaps[i : i + _GAP_CHUNK]]
            late.extend(session.execute(select(*columns).where(or_(*ranges))).all())
        face_ids = sorted({f for _, _, faces in (*new, *late) for f in faces or ()})
        erased = {f for _, action, faces in (*new, *late) if action == ERASURE_ACTION for f in faces or ()}
        self._apply(session, face_ids, erased)
        position.fill(seq for seq, _, _ in late)
        position.advance([seq for seq, _, _ in new], xmax)
        position.expire(xmin)
        self._children.index.watermark = position.safe_watermark  # after the changes: see save()
        if new or late:
            self._version += 1
        if erased:
            self._scrub_snapshots(erased)
        return len(new) + len(late)

    def _scrub_snapshots(self, erased: Collection[int]) -> None:
        """Erasure: rewrite the snapshots now, not at the next autosave (see the module docstring).

        A write that fails (disk full) is logged and does not fail the read that
        applied the erasure; this gallery's own snapshot is then retried by the autosave.
        """
        rewritten = 0
        try:
            if self.path.exists():
                self.save()
            ids = np.asarray(sorted(erased), dtype=np.int64)
            for path in self.path.parent.glob("*.cfidx"):
                if path != self.path:
                    rewritten += purge_snapshot(path, ids)
        except OSError as exc:
            log.warning(
                "index %s: could not rewrite a snapshot after an erasure (%s); erased vectors may stay"
                " on disk until the next successful save",
                self.model_key,
                exc.strerror or type(exc).__name__,
            )
            return
        log.info(
            "index %s: erasure of %d faces applied; snapshot and %d other model snapshot(s) rewritten",
            self.model_key,
            len(erased),
            rewritten,
        )

    def _apply(self, session: Session, face_ids: Sequence[int], erased: Collection[int] = ()) -> None:
        """Re-read these faces and upsert or remove them; faces in `erased` are purged."""
        if not face_ids:
            return
        model_row = self._model_id(session)
        for i in range(0, len(face_ids), _CHUNK):
            chunk = face_ids[i : i + _CHUNK]
            rows = read_indexable(session, model_row, self.dim, chunk)
            keep = set(rows.face_ids.tolist())
            taken = self._read_taken(session, rows.face_ids)
            with self._rw.write():
                gone = [f for f in chunk if f not in keep]
                self._children.remove([f for f in gone if f not in erased])
                self._children.remove([f for f in gone if f in erased], purge=True)
                if len(rows):
                    self._children.upsert(rows.face_ids, rows.child_ids, rows.vectors)
                if taken is not None:
                    self._children.set_taken(*taken)

    def rebuild(self) -> int:
        """Replace the index with one built from the DB; returns the number of faces."""
        with self._sync:
            floor = self._quiesce_floor()
            with self._read() as session:
                _, xmax = self._horizon(session)
                high = session.scalar(select(func.coalesce(func.max(AuditEvent.seq), 0)))
                gaps = session.execute(
                    text(
                        "SELECT prev + 1, seq - 1 FROM (SELECT seq, LAG(seq, 1, :floor)"
                        " OVER (ORDER BY seq) AS prev FROM audit_events WHERE seq > :floor) AS t"
                        " WHERE seq - prev > 1"
                    ),
                    {"floor": floor},
                ).all()
                rows = read_indexable(session, self._model_id(session), self.dim)
                taken = self._read_taken(session, rows.face_ids)
            children = self._child_index(create_index(self.settings, self.model_key, self.dim))
            if taken is not None:
                children.set_taken(*taken)
            # an exact store at once, whatever the size: HNSW is built by the background thread
            children.load(rows.face_ids, rows.child_ids, rows.vectors)
            del rows
            position = FeedPosition(high=high, grace_s=self._grace_s)
            position.add_gaps(gaps, xmax)
            children.index.watermark = position.safe_watermark
            with self._rw.write():
                self._children, self._position = children, position
            self._version += 1
        count = children.index.count
        log.info("index %s: rebuilt with %d faces at seq %d", self.model_key, count, high)
        return count

    def _quiesce_floor(self) -> int:
        """A seq below which no transaction can still commit an event (0 when unknown).

        PostgreSQL: note the newest seq and the running transactions, then wait for
        those to end; any event committed later was allocated after that seq. On
        SQLite commits are in seq order, so every gap below the newest seq is final.
        """
        with self.db.session() as session:
            newest = session.scalar(select(func.coalesce(func.max(AuditEvent.seq), 0)))
            if self.db.is_sqlite:
                return newest
            xmax = session.execute(
                text("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            ).scalar_one()
            session.rollback()
            deadline = time.monotonic() + self._quiesce_s
            while time.monotonic() < deadline:
                xmin = session.execute(
                    text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                ).scalar_one()
                session.rollback()
                if xmin >= xmax:
                    return newest
                time.sleep(0.02)
        log.warning(
            "index %s: transactions still running after %.0f s; tracking all gaps",
            self.model_key,
            self._quiesce_s,
        )
        return 0

    # --- consistency ------------------------------------------------------------------

    def check(self) -> IndexDifferences:
        """Catch up, then compare the index with what a rebuild would give, in one DB snapshot."""
        with self._sync, self._read() as session:
            self._catch_up_in(session)
            truth = read_indexable(session, self._model_id(session), self.dim)
        with self._rw.read():
            children = self._children
            present = children.index.ids()
            diff = IndexDifferences(db_count=len(truth), index_count=len(present))
            diff.missing = np.setdiff1d(truth.face_ids, present).tolist()
            diff.extra = np.setdiff1d(present, truth.face_ids).tolist()
            both = np.intersect1d(present, truth.face_ids)
            if len(both):
                at = np.searchsorted(truth.face_ids, both)
                far = np.abs(children.index.vectors_of(both) - truth.vectors[at]).max(axis=1) > 1e-6
                moved = children.owners(both) != truth.child_ids[at]
                diff.mismatched = both[far | moved].tolist()
        return diff

    # --- snapshots ----------------------------------------------------------------------

    def save(self) -> None:
        """Write the snapshot atomically.

        Safe while catch-ups run: the index's watermark is raised only after the
        changes it covers are applied, so a snapshot may hold changes newer than
        its watermark (replayed again, idempotently) but never miss older ones.
        """
        with self._save_lock:
            with self._rw.read():
                index, version = self._children.index, self._version
            index.save(self.path)
            self._saved_version = version

    def start_autosave(self, interval_s: float | None = None) -> None:
        """Save every `interval_s` (default: Settings.index_snapshot_interval_s) when changed.

        The same background thread also lets the FAISS index switch between exact
        and HNSW (or compact HNSW) off the request path.
        """
        if self._autosave is not None:
            return
        interval = interval_s or self.settings.index_snapshot_interval_s
        self._stop.clear()

        def loop() -> None:
            # a store switch that is due (HNSW after a rebuild from the DB) starts at once, not
            # after a full interval; the gallery serves from the exact store meanwhile
            while not self._stop.wait(_SWITCH_DELAY_S if self.index_switch_due() else interval):
                try:
                    self.maintain()
                except Exception:  # noqa: BLE001 - keep serving; the next round retries
                    log.exception("index %s: background save failed", self.model_key)

        self._autosave = threading.Thread(target=loop, name=f"gallery-save-{self.model_key}", daemon=True)
        self._autosave.start()

    def index_switch_due(self) -> bool:
        """Whether the FAISS index should switch store (exact -> HNSW) or compact now."""
        index = self._children.index
        return isinstance(index, FaissIndex) and index.needs_rebuild()

    def switch_store_now(self) -> bool:
        """Build the store this gallery's size calls for (HNSW above the switch point) right away,
        instead of leaving it to the background thread: for offline work such as `reindex`."""
        index = self._children.index
        if not (isinstance(index, FaissIndex) and index.rebuild_if_needed()):
            return False
        with self._sync:
            self._version += 1
        return True

    def maintain(self) -> None:
        """One background round: catch up (changes from other processes), switch/compact the FAISS
        store when due, save when changed."""
        self.catch_up()
        index = self._children.index
        if isinstance(index, FaissIndex) and index.rebuild_if_needed():
            with self._sync:
                self._version += 1
        if self._version != self._saved_version:
            self.save()

    def close(self) -> None:
        """Stop the background thread and save what changed (call on shutdown)."""
        if self._autosave is not None:
            self._stop.set()
            self._autosave.join()
            self._autosave = None
        if self._version != self._saved_version:
            self.save()

    # --- search -----------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int) -> list[list[ChildCandidate]]:
        """Top-k children per unit query row (q, dim), best first."""
        with self._rw.read():
            return self._children.search(vectors, k)

    def child_scores(self, vector: np.ndarray, child_ids: Iterable[int]) -> list[ChildCandidate]:
        """Exact scores of one unit query against these children's templates (absent ones left out)."""
        with self._rw.read():
            return self._children.child_scores(np.asarray(vector, dtype=np.float32).reshape(-1), child_ids)

    # --- DB reads -------------------------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Session]:
        """A read transaction that sees one consistent snapshot of the DB."""
        with self.db.session() as session:
            if not self.db.is_sqlite:
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            yield session

    def _horizon(self, session: Session) -> tuple[int | None, int | None]:
        """PostgreSQL: (oldest running xid, next xid) of this transaction's snapshot."""
        if self.db.is_sqlite:
            return None, None
        row = session.execute(
            text(
                "SELECT pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint"
                " FROM (SELECT pg_current_snapshot() AS s) AS snap"
            )
        ).one()
        return int(row[0]), int(row[1])

    def _model_id(self, session: Session) -> int | None:
        if self._model_row is None:
            self._model_row = session.scalar(
                select(EmbeddingModel.id).where(EmbeddingModel.key == self.model_key)
            )
        return self._model_row
