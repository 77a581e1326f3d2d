"""Does a new face look like the child it is added to? The check before a template is stored.

A new face of a child that already has templates (of the current embedding
model, on an active child: the indexable ones) is *inconsistent* with the child when
- `closer_to_other_child`: another child's best template scores higher
  against it than the best of the child's own templates (recognition would
  rather name the other child), or
- `far_from_child`: its best score against the child's own templates is below
  `review_threshold - consistency_margin` (it looks like none of them).

A child with no templates yet is never checked. Enrollment (API and admin)
stores an inconsistent face only when the caller confirms it; the CSV import
notes it per row (and refuses the row with `--strict`). Scores are cosine
similarities of unit vectors, best template against best template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from sqlalchemy import select

from childface.db.models import Embedding, Face
from childface.db.session import Database
from childface.services.gallery import checksums_hold, indexable_query

if TYPE_CHECKING:
    from childface.services.recognition import ChildSearch
    from childface.services.runtime import Runtime

#: the reason code of an inconsistent face, in API results and import reports
REASON = "inconsistent_with_child"

Rule = Literal["closer_to_other_child", "far_from_child"]


@dataclass(frozen=True)
class Verdict:
    """The check's scores for one face against one child that has templates."""

    own_score: float  # best cosine against the child's own templates
    threshold: float  # review_threshold - consistency_margin
    other_child_id: int | None = None  # the best-scoring other child, if any is enrolled
    other_score: float | None = None

    @property
    def rule(self) -> Rule | None:
        """Which rule fails, or None when the face is consistent with the child."""
        if self.other_score is not None and self.other_score > self.own_score:
            return "closer_to_other_child"
        if self.own_score < self.threshold:
            return "far_from_child"
        return None

    @property
    def consistent(self) -> bool:
        return self.rule is None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for API results and audit events."""
        return {
            "rule": self.rule,
            "own_score": round(self.own_score, 4),
            "threshold": round(self.threshold, 4),
            "other_child_id": self.other_child_id,
            "other_score": None if self.other_score is None else round(self.other_score, 4),
        }

    def words(self, other_name: str | None = None) -> str:
        """The scores in a sentence (reports, API messages)."""
        text = f"best score against the child's own photos {self.own_score:.3f}"
        if self.other_score is not None:
            other = other_name or f"child {self.other_child_id}"
            text += f", best other child ({other}) {self.other_score:.3f}"
        return text


class ConsistencyCheck:
    """The check against one database and its face index (see the module docstring)."""

    def __init__(
        self, *, db: Database, gallery: ChildSearch, model_db_id: int, review_threshold: float, margin: float
    ) -> None:
        self.db = db
        self.gallery = gallery
        self.model_db_id = model_db_id
        self.threshold = review_threshold - margin

    @classmethod
    def for_runtime(cls, runtime: Runtime) -> ConsistencyCheck:
        """The check on a runtime's database and its caught-up gallery, with its thresholds."""
        return cls(
            db=runtime.db,
            gallery=runtime.current_gallery(),
            model_db_id=runtime.model_db_id,
            review_threshold=runtime.settings.review_threshold,
            margin=runtime.settings.consistency_margin,
        )

    def check(
        self, child_id: int | None, vector: np.ndarray, *, also_own: Sequence[np.ndarray] = ()
    ) -> Verdict | None:
        """The verdict for a face (unit vector) about to join `child_id`; None when not checked.

        `also_own`: templates of the child not stored yet (earlier rows of an import batch).
        Not checked: a child that does not exist yet (None) or has no templates.
        """
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        with self.db.session() as session:
            templates = indexable_query(self.model_db_id).add_columns(Embedding.checksum)
            templates = templates.where(Face.child_id == child_id)
            rows = [] if child_id is None else session.execute(templates).all()
            # like the index: a template whose stored vector is damaged does not count
            intact = checksums_hold(self.model_db_id, [r[2] for r in rows], [r[3] for r in rows])
            own = [
                np.frombuffer(row[2], dtype="<f4")
                for row, ok in zip(rows, intact, strict=True)
                if ok and len(row[2]) == query.nbytes
            ]
            own += [np.asarray(v, dtype=np.float32).reshape(-1) for v in also_own]
            if not own:
                return None
            own_score = float(np.max(np.stack(own) @ query))
            nearest = self.gallery.search(query[None, :], 2)[0]
            other = next((c for c in nearest if c.child_id != child_id), None)
            if other is None:
                return Verdict(own_score, self.threshold)
            # the other child's best template, scored exactly (its child-level score may be a mean)
            blob = session.scalar(
                select(Embedding.vector).where(
                    Embedding.face_id == other.face_id, Embedding.model_id == self.model_db_id
                )
            )
        other_score = other.score if blob is None else float(np.frombuffer(blob, dtype="<f4") @ query)
        return Verdict(own_score, self.threshold, other.child_id, other_score)
