"""Likely double enrollments: pairs of different children whose templates are suspiciously similar.

Definition. Every searchable template (enrolled face of an active child,
embedded by the gallery's model) is scored against every other child, the way
recognition scores a child (`child_score`: its best template, or the mean of
its best two); each other child scoring at least `threshold` forms a pair with
the template's child. A pair's score is the highest seen in either direction;
its faces are the template that saw it and that child's best template (on
equal scores: the template with the lowest face id, then the other child's
lowest). Pairs come best first, equal scores by child ids. Every other child
counts, not only a template's nearest few. Scores are float32 cosines, as in
recognition (the summation order of the matrix product can move the sixth
decimal). The default threshold is the review threshold: pairs that
recognition itself could not tell apart with confidence. Staff then merge
(`POST /children/{id}/merge`), or dismiss the pair as two different children
(`services.dismissals`: a dismissed pair is never reported again). Children
marked as siblings or twins (`services.relations`) look alike for a reason: such
a pair is never reported either.

Suspect face. When one face alone makes a pair — of a child with several
templates, exactly that one scores at least `threshold` against the other
child — the face was most likely enrolled under the wrong child: the pair
names it (`suspect_face_id`), and moving it is the fix, not a merge. When both
sides have such a face, the suspect is the one least like its own child's
other templates.

Mechanism. The templates are read from the DB (the truth; the index holds the
same vectors) and compared by blocks of rows, one matrix product per block
against all templates (`_BLOCK_SIMILARITIES` at a time, 32 MB). Only
similarities at or above the running cutoff leave a block: the threshold, or,
once `limit` pairs are known, the `limit`-th best pair score (a pair below it
can no longer be returned; one that rises later is seen again). 10,000
templates: 0.14 s on two CPU cores, 0.6 s while other work loads them
(`childface bench duplicates`); the loop over each template before took 3-7 s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from childface.config import Settings
from childface.db.models import Child, ChildStatus, Embedding, Face, ReviewState
from childface.db.session import Database
from childface.services.dismissals import dismissed_pairs
from childface.services.relations import related_pairs

#: similarities computed per block (rows x all templates), float32: 32 MB
_BLOCK_SIMILARITIES = 8_000_000
#: rows whose candidates are merged at once: a low threshold's first rows already raise the cutoff
_ROWS_PER_MERGE = 32


@dataclass(frozen=True)
class Side:
    child_id: int
    external_id: str
    name: str
    face_id: int


@dataclass(frozen=True)
class DuplicatePair:
    a: Side
    b: Side
    score: float
    #: the one face that makes the pair, and the child it is in now (module docstring)
    suspect_face_id: int | None = None
    suspect_child_id: int | None = None


@dataclass(frozen=True)
class ScoredPair:
    """Child ids a < b, the pair's score and its faces (face_a of child a, face_b of child b)."""

    a: int
    b: int
    score: float
    face_a: int
    face_b: int


def find_duplicates(
    *, db: Database, settings: Settings, model_db_id: int, threshold: float | None = None, limit: int = 100
) -> list[DuplicatePair]:
    """The `limit` most similar pairs of different children at or above `threshold` (module docstring)."""
    threshold = settings.review_threshold if threshold is None else threshold
    face_ids, child_ids, vectors = _templates(db, model_db_id)
    with db.session() as session:
        dismissed = dismissed_pairs(session) | related_pairs(session)  # siblings and twins are no duplicates
    # at most len(dismissed) of the best pairs are left out: asking for that many more keeps `limit`
    ranked = duplicate_pairs(
        face_ids, child_ids, vectors, threshold=threshold, limit=limit + len(dismissed),
        child_score=settings.child_score,
    )
    ranked = [pair for pair in ranked if (pair.a, pair.b) not in dismissed][:limit]
    rows_of = _rows_by_child(child_ids, {cid for pair in ranked for cid in (pair.a, pair.b)})
    ids = {cid for pair in ranked for cid in (pair.a, pair.b)}
    names: dict[int, tuple[str, str]] = {}
    if ids:
        with db.session() as session:
            query = select(Child.id, Child.external_id, Child.display_name).where(Child.id.in_(ids))
            names = {r.id: (r.external_id, r.display_name) for r in session.execute(query)}
    pairs = []
    for p in ranked:
        if p.a not in names or p.b not in names:
            continue
        suspect = _suspect(face_ids, vectors, rows_of, p.a, p.b, threshold, settings.child_score)
        pairs.append(
            DuplicatePair(
                a=Side(p.a, *names[p.a], face_id=p.face_a),
                b=Side(p.b, *names[p.b], face_id=p.face_b),
                score=round(p.score, 6),
                suspect_face_id=suspect[0] if suspect else None,
                suspect_child_id=suspect[1] if suspect else None,
            )
        )
    return pairs


def _rows_by_child(child_ids: np.ndarray, wanted: set[int]) -> dict[int, np.ndarray]:
    return {cid: np.flatnonzero(child_ids == cid) for cid in wanted}


def _suspect(
    face_ids: np.ndarray,
    vectors: np.ndarray,
    rows_of: dict[int, np.ndarray],
    a: int,
    b: int,
    threshold: float,
    child_score: str,
) -> tuple[int, int] | None:
    """(face id, its child) when one face alone makes the pair (module docstring), else None."""
    floor = _float32_at_least(threshold)
    found: list[tuple[float, int, int]] = []  # (likeness to its own child, face id, child id)
    for own, other in ((a, b), (b, a)):
        mine, theirs = rows_of[own], rows_of[other]
        if len(mine) < 2:
            continue
        sims = vectors[mine] @ vectors[theirs].T
        top = np.sort(sims, axis=1)[:, ::-1]
        scores = top[:, :2].mean(axis=1) if child_score == "mean2" and top.shape[1] > 1 else top[:, 0]
        high = np.flatnonzero(scores >= floor)
        if len(high) != 1:
            continue
        i = int(high[0])
        siblings = vectors[np.delete(mine, i)] @ vectors[mine[i]]
        found.append((float(siblings.max()), int(face_ids[mine[i]]), own))
    if not found:
        return None
    _, face_id, child_id = min(found)
    return face_id, child_id


def _templates(db: Database, model_db_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face ids, child ids, unit vectors) of every searchable template, in one read."""
    query = (
        select(Face.id, Face.child_id, Embedding.vector)
        .join(Embedding, Embedding.face_id == Face.id)
        .join(Child, Child.id == Face.child_id)
        .where(
            Embedding.model_id == model_db_id,
            Face.review_state == ReviewState.enrolled,
            Face.retired_at.is_(None),  # the indexability rule (services/gallery.py)
            Child.status == ChildStatus.active,
        )
    )
    with db.session() as session:
        rows = session.execute(query).all()
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    face_ids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    child_ids = np.fromiter((r[1] for r in rows), np.int64, len(rows))
    vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), -1)
    return face_ids, child_ids, vectors.astype(np.float32)


def duplicate_pairs(
    face_ids: np.ndarray,
    child_ids: np.ndarray,
    vectors: np.ndarray,
    *,
    threshold: float,
    limit: int,
    child_score: str = "max",
) -> list[ScoredPair]:
    """The `limit` best pairs over these templates (unit float32 rows), best first (module docstring)."""
    order = np.lexsort((face_ids, child_ids))  # by child, then face: each child's templates are one run
    vecs = np.ascontiguousarray(np.asarray(vectors, np.float32)[order])
    layout = _Layout.of(np.asarray(face_ids, np.int64)[order], np.asarray(child_ids, np.int64)[order])
    n = len(vecs)
    if n == 0 or limit < 1:
        return []
    floor = _float32_at_least(threshold)
    best = _Best.empty()
    step = max(1, _BLOCK_SIMILARITIES // n)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        sims = vecs[r0:r1] @ vecs.T
        for s in range(layout.segment[r0], layout.segment[r1 - 1] + 1):  # a child is no duplicate of itself
            lo, hi = layout.starts[s], layout.ends[s]
            sims[max(lo, r0) - r0 : min(hi, r1) - r0, lo:hi] = -np.inf
        hit_rows = np.flatnonzero(sims.max(axis=1) >= max(floor, best.cutoff(limit)))  # most rows: none
        for i in range(0, len(hit_rows), _ROWS_PER_MERGE):  # each merge may raise the cutoff for the next
            cutoff = max(floor, best.cutoff(limit))
            found = _candidates(sims, hit_rows[i : i + _ROWS_PER_MERGE], r0, cutoff, layout, child_score)
            best = best.merged(found, limit)
    return best.ranked(limit)


@dataclass(frozen=True)
class _Layout:
    """Templates sorted by (child, face): each child's templates are one run of columns."""

    faces: np.ndarray
    kids: np.ndarray
    starts: np.ndarray  # per child: first column
    ends: np.ndarray  # per child: past its last column
    segment: np.ndarray  # per column: its child's run

    @classmethod
    def of(cls, faces: np.ndarray, kids: np.ndarray) -> _Layout:
        new_child = np.r_[True, kids[1:] != kids[:-1]]
        starts = np.flatnonzero(new_child)
        return cls(faces, kids, starts, np.r_[starts[1:], len(kids)], np.cumsum(new_child) - 1)


def _candidates(
    sims: np.ndarray, block_rows: np.ndarray, r0: int, cutoff: np.float32, layout: _Layout, child_score: str
) -> _Best:
    """The entries of these rows of a block (block row i is template r0 + i) scoring >= cutoff."""
    rows, cols = np.nonzero(sims[block_rows] >= cutoff)
    if not len(rows):
        return _Best.empty()
    rows = block_rows[rows]
    # one candidate per (row, other child), scored over all that child's templates
    segment = layout.segment
    first = np.r_[True, (rows[1:] != rows[:-1]) | (segment[cols[1:]] != segment[cols[:-1]])]
    rows, segs = rows[first], segment[cols[first]]
    score, best_col = _child_scores(sims, rows, layout.starts[segs], layout.ends[segs], child_score)
    keep = score >= cutoff
    rows, best_col, score = rows[keep], best_col[keep], score[keep]
    own, other = layout.kids[r0 + rows], layout.kids[best_col]
    row_face, col_face = layout.faces[r0 + rows], layout.faces[best_col]
    a_first = own < other
    return _Best(
        a=np.where(a_first, own, other),
        b=np.where(a_first, other, own),
        score=score,
        row_face=row_face,
        face_a=np.where(a_first, row_face, col_face),
        face_b=np.where(a_first, col_face, row_face),
    )


def _child_scores(
    sims: np.ndarray, rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, child_score: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate (row, child's columns lo:hi): the child's score and its best column.

    As recognition scores a child: its best template's similarity ('max') or the
    mean of its best two ('mean2'; one template scores its one), float32; the
    best column is the first (lowest face id) of the equal best.
    """
    lengths = hi - lo
    starts = np.r_[0, np.cumsum(lengths)[:-1]]
    owner = np.repeat(np.arange(len(rows)), lengths)
    cols = lo[owner] + np.arange(owner.size) - starts[owner]
    values = sims[rows[owner], cols]
    top1 = np.maximum.reduceat(values, starts)
    at_top = values == top1[owner]
    first_top = np.minimum.reduceat(np.where(at_top, np.arange(values.size), values.size), starts)
    best_col = cols[first_top]
    if child_score != "mean2":
        return top1, best_col
    values[first_top] = -np.inf
    top2 = np.where(lengths > 1, np.maximum.reduceat(values, starts), top1)
    return (top1 + top2) / np.float32(2), best_col


def _float32_at_least(value: float) -> np.float32:
    """The smallest float32 >= value: `similarity >= it` in float32 is `float(similarity) >= value`."""
    low = np.float32(value)
    return low if float(low) >= value else np.nextafter(low, np.float32(np.inf))


@dataclass
class _Best:
    """The best entry per pair so far (arrays, one element per pair)."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    row_face: np.ndarray  # the template that saw the score (equal scores: the lowest face id wins)
    face_a: np.ndarray
    face_b: np.ndarray

    @classmethod
    def empty(cls) -> _Best:
        ints = np.zeros(0, np.int64)
        return cls(ints, ints, np.zeros(0, np.float32), ints, ints, ints)

    def cutoff(self, limit: int) -> np.float32:
        """The `limit`-th best score once `limit` pairs are known (no lower pair can be returned)."""
        if len(self.score) < limit:
            return np.float32(-np.inf)
        return np.partition(self.score, len(self.score) - limit)[len(self.score) - limit]

    def merged(self, other: _Best, limit: int) -> _Best:
        """Both sets' best entry per pair, without the pairs below the new cutoff."""
        if not len(other.a):
            return self
        fields = ("a", "b", "score", "row_face", "face_a", "face_b")
        joined = {name: np.concatenate([getattr(self, name), getattr(other, name)]) for name in fields}
        order = np.lexsort((joined["row_face"], -joined["score"], joined["b"], joined["a"]))
        a, b = joined["a"][order], joined["b"][order]
        first = order[np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])]]
        best = _Best(**{name: values[first] for name, values in joined.items()})
        keep = best.score >= best.cutoff(limit)
        return _Best(**{name: getattr(best, name)[keep] for name in fields})

    def ranked(self, limit: int) -> list[ScoredPair]:
        """Best first; equal scores by child ids."""
        order = np.lexsort((self.b, self.a, -self.score))[:limit]
        return [
            ScoredPair(int(self.a[i]), int(self.b[i]), float(self.score[i]), int(self.face_a[i]),
                       int(self.face_b[i]))
            for i in order
        ]
