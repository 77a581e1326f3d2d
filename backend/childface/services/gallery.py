"""The searchable gallery of one embedding model: a vector index kept true to the DB.

The relational DB is the truth (DESIGN.md invariant 1); the index is derived
from it and this module is its only writer. A face is *indexable* — present in
the index under its face id — exactly when

    review_state == enrolled, child_id is set, that child's status is active,
    and the face has an embedding of this gallery's model.

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
configured aggregation (`max`, or `mean2`: mean of the best two).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

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
    ReviewState,
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
from childface.services.erasure import ERASURE_ACTION

log = logging.getLogger(__name__)

ChildScore = Literal["max", "mean2"]

#: faces re-read per query while catching up (bounded IN lists)
_CHUNK = 500
#: gap ranges re-read per query
_GAP_CHUNK = 100
#: default seconds a gap stays open after its transactions ended (see module docstring)
GAP_GRACE_S = 10.0
#: how long a rebuild waits for transactions running at its start to end before it
#: falls back to tracking every gap in the whole feed
REBUILD_QUIESCE_S = 10.0


# ---- embedding models ------------------------------------------------------


def ensure_embedding_model(db: Database, *, key: str, name: str, weights_sha256: str, dim: int) -> int:
    """The `embedding_models` row id for this model key, created on first use.

    Idempotent and safe under concurrent callers: a racing insert loses on the
    unique key and reads the winner's row.
    """
    for _ in range(2):
        try:
            with db.transaction() as session:
                row = session.scalar(select(EmbeddingModel).where(EmbeddingModel.key == key))
                if row is None:
                    row = EmbeddingModel(key=key, name=name, weights_sha256=weights_sha256, dim=dim)
                    session.add(row)
                    session.flush()
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

    Not thread-safe by itself; `Gallery` guards it. Evaluation uses it directly
    as an in-memory gallery.
    """

    def __init__(self, index: VectorIndex, child_score: ChildScore = "max") -> None:
        self.index = index
        self.child_score: ChildScore = child_score
        self.child_of: dict[int, int] = {}
        self.faces_of: dict[int, set[int]] = {}

    @property
    def dim(self) -> int:
        return self.index.dim

    def upsert(self, face_ids: Sequence[int], child_ids: Sequence[int], vectors: np.ndarray) -> None:
        if not len(face_ids):
            return
        self.index.add(np.asarray(face_ids, dtype=np.int64), vectors)
        for face_id, child_id in zip(face_ids, child_ids, strict=True):
            self._unmap(face_id)
            self.child_of[face_id] = child_id
            self.faces_of.setdefault(child_id, set()).add(face_id)

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
        for face_id in present:
            self._unmap(face_id)
        return len(present)

    def _unmap(self, face_id: int) -> None:
        child_id = self.child_of.pop(face_id, None)
        if child_id is not None:
            faces = self.faces_of[child_id]
            faces.discard(face_id)
            if not faces:
                del self.faces_of[child_id]

    def child_scores(self, query: np.ndarray, child_ids: Iterable[int]) -> list[ChildCandidate]:
        """Exact child-level scores of one unit query against every template of these children."""
        children = [c for c in dict.fromkeys(child_ids) if c in self.faces_of]
        if not children:
            return []
        faces = [sorted(self.faces_of[c]) for c in children]
        flat = np.fromiter((f for group in faces for f in group), dtype=np.int64)
        sims = self.index.vectors_of(flat) @ query.astype(np.float32)
        out: list[ChildCandidate] = []
        start = 0
        for child_id, group in zip(children, faces, strict=True):
            own = sims[start : start + len(group)]
            start += len(group)
            order = np.argsort(-own, kind="stable")
            best = float(own[order[0]])
            if self.child_score == "mean2" and len(group) > 1:
                score = float((own[order[0]] + own[order[1]]) / 2.0)
            else:
                score = best
            out.append(ChildCandidate(child_id, score, group[int(order[0])], len(group)))
        out.sort(key=lambda c: (-c.score, c.child_id))
        return out

    def search(self, vectors: np.ndarray, k: int) -> list[list[ChildCandidate]]:
        """Top-k children per query row, best first."""
        queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        total = self.index.count
        if total == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        want_children = min(k, len(self.faces_of))
        k_faces = min(total, max(4 * k, 16))
        while True:
            ids, _ = self.index.search(queries, k_faces)
            candidates = [[self.child_of[f] for f in row if f >= 0 and f in self.child_of] for row in ids]
            enough = all(len(set(row)) >= want_children for row in candidates)
            if enough or k_faces >= total:
                break
            k_faces = min(total, k_faces * 4)
        return [self.child_scores(q, row)[:k] for q, row in zip(queries, candidates, strict=True)]


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
        .where(Face.review_state == ReviewState.enrolled, Child.status == ChildStatus.active)
    )


@dataclass(frozen=True)
class _FaceRow:
    face_id: int
    child_id: int
    vector: np.ndarray


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
        self._children = ChildIndex(create_index(settings, model_key, dim), settings.child_score)
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
        children = ChildIndex(index, self.settings.child_score)
        present = set(index.ids().tolist())
        with self._read() as session:
            owners = session.execute(select(Face.id, Face.child_id).where(Face.child_id.is_not(None))).all()
        for face_id, child_id in owners:
            if face_id in present:
                children.child_of[face_id] = child_id
                children.faces_of.setdefault(child_id, set()).add(face_id)
        position = FeedPosition(high=index.watermark, grace_s=self._grace_s)
        with self._rw.write():
            self._children, self._position = children, position

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
            rows = self._face_rows(session, model_row, chunk)
            keep = {r.face_id for r in rows}
            with self._rw.write():
                gone = [f for f in chunk if f not in keep]
                self._children.remove([f for f in gone if f not in erased])
                self._children.remove([f for f in gone if f in erased], purge=True)
                if rows:
                    self._children.upsert(
                        [r.face_id for r in rows],
                        [r.child_id for r in rows],
                        np.stack([r.vector for r in rows]),
                    )

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
                rows = self._face_rows(session, self._model_id(session), None)
            children = ChildIndex(
                create_index(self.settings, self.model_key, self.dim), self.settings.child_score
            )
            if rows:
                children.upsert(
                    [r.face_id for r in rows], [r.child_id for r in rows], np.stack([r.vector for r in rows])
                )
            position = FeedPosition(high=high, grace_s=self._grace_s)
            position.add_gaps(gaps, xmax)
            children.index.watermark = position.safe_watermark
            with self._rw.write():
                self._children, self._position = children, position
            self._version += 1
        log.info("index %s: rebuilt with %d faces at seq %d", self.model_key, len(rows), high)
        return len(rows)

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
            truth = {r.face_id: r for r in self._face_rows(session, self._model_id(session), None)}
        with self._rw.read():
            children = self._children
            present = children.index.ids().tolist()
            diff = IndexDifferences(db_count=len(truth), index_count=len(present))
            in_index = set(present)
            diff.missing = sorted(f for f in truth if f not in in_index)
            diff.extra = sorted(f for f in present if f not in truth)
            both = [f for f in present if f in truth]
            if both:
                stored = children.index.vectors_of(np.asarray(both, dtype=np.int64))
                expected = np.stack([truth[f].vector for f in both])
                far = np.abs(stored - expected).max(axis=1) > 1e-6
                diff.mismatched = sorted(
                    f
                    for f, bad in zip(both, far.tolist(), strict=True)
                    if bad or children.child_of.get(f) != truth[f].child_id
                )
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
            while not self._stop.wait(interval):
                try:
                    self.maintain()
                except Exception:  # noqa: BLE001 - keep serving; the next round retries
                    log.exception("index %s: background save failed", self.model_key)

        self._autosave = threading.Thread(target=loop, name=f"gallery-save-{self.model_key}", daemon=True)
        self._autosave.start()

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

    def _face_rows(
        self, session: Session, model_row: int | None, face_ids: Sequence[int] | None
    ) -> list[_FaceRow]:
        """Indexable faces among `face_ids` (all when None), with their vectors."""
        if model_row is None:
            return []
        query = indexable_query(model_row, vectors=True)
        if face_ids is not None:
            query = query.where(Face.id.in_(face_ids))
        rows = []
        for face_id, child_id, blob in session.execute(query.order_by(Face.id)):
            vector = np.frombuffer(blob, dtype="<f4")
            if vector.shape != (self.dim,) or abs(float(np.linalg.norm(vector)) - 1.0) > 1e-3:
                log.error("face %d: stored embedding is not a unit %d-d vector; left out", face_id, self.dim)
                continue
            rows.append(_FaceRow(face_id, child_id, vector.astype(np.float32)))
        return rows
