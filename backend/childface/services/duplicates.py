"""Likely double enrollments: pairs of different children whose templates are suspiciously similar.

Every searchable template (enrolled face of an active child, embedded by the
gallery's model) is searched against the gallery; each other child scoring at
least `threshold` forms a pair with the template's child. A pair's score is
the highest seen in either direction (child-level, as recognition scores).
The default threshold is the review threshold: pairs that recognition itself
could not tell apart with confidence. Staff then merge (`POST
/children/{id}/merge`) or leave them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import select

from childface.db.models import Child, ChildStatus, Embedding, Face, ReviewState

if TYPE_CHECKING:
    from childface.services.runtime import Runtime

_CHUNK = 512


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


def find_duplicates(
    *, runtime: Runtime, threshold: float | None = None, limit: int = 100
) -> list[DuplicatePair]:
    """The `limit` most similar pairs of different children above `threshold`, best first."""
    threshold = runtime.settings.review_threshold if threshold is None else threshold
    gallery = runtime.current_gallery()
    model_db_id = runtime.model_db_id
    k = min(runtime.settings.top_k + 1, 50)
    best: dict[tuple[int, int], tuple[float, int, int]] = {}
    with runtime.db.session() as session:
        query = (
            select(Face.id, Face.child_id, Embedding.vector)
            .join(Embedding, Embedding.face_id == Face.id)
            .join(Child, Child.id == Face.child_id)
            .where(
                Embedding.model_id == model_db_id,
                Face.review_state == ReviewState.enrolled,
                Child.status == ChildStatus.active,
            )
            .order_by(Face.id)
        )
        rows = session.execute(query).all()
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        vectors = np.stack([np.frombuffer(r.vector, dtype="<f4") for r in chunk]).astype(np.float32)
        for row, candidates in zip(chunk, gallery.search(vectors, k), strict=True):
            for cand in candidates:
                if cand.child_id == row.child_id or cand.score < threshold:
                    continue
                if row.child_id < cand.child_id:
                    key, faces = (row.child_id, cand.child_id), (row.id, cand.face_id)
                else:
                    key, faces = (cand.child_id, row.child_id), (cand.face_id, row.id)
                if key not in best or cand.score > best[key][0]:
                    best[key] = (float(cand.score), *faces)
    ranked = sorted(best.items(), key=lambda item: -item[1][0])[:limit]
    ids = {cid for pair, _ in ranked for cid in pair}
    with runtime.db.session() as session:
        names = (
            {
                r.id: (r.external_id, r.display_name)
                for r in session.execute(
                    select(Child.id, Child.external_id, Child.display_name).where(Child.id.in_(ids))
                )
            }
            if ids
            else {}
        )
    return [
        DuplicatePair(
            a=Side(a, *names[a], face_id=face_a),
            b=Side(b, *names[b], face_id=face_b),
            score=round(score, 6),
        )
        for (a, b), (score, face_a, face_b) in ranked
        if a in names and b in names
    ]
