"""Recognition decisions: 1:N identify and 1:1 verify, with one three-way vocabulary.

Scores are cosine similarities of unit embeddings (DESIGN.md invariant 4),
aggregated per child over its templates (`Settings.child_score`). Three
settings make the decision, in one place (`Settings`):

- `accept_threshold`: at or above it a score is strong enough to act on;
- `match_margin` (identify only): the best child must also lead the runner-up
  child by at least this much, else two children are too close to call;
- `review_threshold`: at or above it (and not a match) a person should look.

Decisions:

- ``match``: best >= accept and margin >= match_margin (1:1: score >= accept);
- ``review``: best >= review but not a match (includes "accept but too close");
- ``unknown``: best < review (1:1: not this child / not the same person).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from childface.config import Settings
from childface.services.gallery import ChildCandidate

Decision = Literal["match", "review", "unknown"]


class ChildSearch(Protocol):
    """What identify needs: a `Gallery`, or an in-memory `ChildIndex` (evaluation)."""

    def search(self, vectors: np.ndarray, k: int) -> list[list[ChildCandidate]]: ...

    def child_scores(self, vector: np.ndarray, child_ids: list[int]) -> list[ChildCandidate]: ...


class UnknownChild(LookupError):
    """Verify against a child that has no searchable templates (absent, archived or no faces)."""

    def __init__(self, child_id: int) -> None:
        super().__init__(f"child {child_id} has no enrolled faces to verify against")
        self.child_id = child_id


@dataclass(frozen=True)
class Identification:
    decision: Decision
    #: the matched child (decision match), else None
    child_id: int | None
    #: best child-level score (-1.0 when the gallery is empty)
    score: float
    #: best minus second-best child score; None with fewer than two candidates
    margin: float | None
    candidates: list[ChildCandidate]


@dataclass(frozen=True)
class Verification:
    decision: Decision
    score: float
    #: the child's best-matching template (None for a vector-to-vector comparison)
    face_id: int | None = None
    n_templates: int | None = None


def decide(score: float, margin: float | None, settings: Settings) -> Decision:
    """The three-way rule; `margin` None means there is no runner-up (nothing to confuse)."""
    if score >= settings.accept_threshold and (margin is None or margin >= settings.match_margin):
        return "match"
    if score >= settings.review_threshold:
        return "review"
    return "unknown"


def identify(
    gallery: ChildSearch, vectors: np.ndarray, settings: Settings, k: int | None = None
) -> list[Identification]:
    """Who is each probe (rows of `vectors`, unit, (q, dim))? Top-k children and a decision."""
    queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    k = max(2, k or settings.top_k)  # the runner-up is needed for the margin
    out = []
    for candidates in gallery.search(queries, k) if len(queries) else []:
        if not candidates:
            out.append(Identification("unknown", None, -1.0, None, []))
            continue
        best = candidates[0]
        margin = best.score - candidates[1].score if len(candidates) > 1 else None
        decision = decide(best.score, margin, settings)
        out.append(
            Identification(
                decision, best.child_id if decision == "match" else None, best.score, margin, candidates
            )
        )
    return out


def verify(
    probe: np.ndarray,
    settings: Settings,
    *,
    gallery: ChildSearch | None = None,
    child_id: int | None = None,
    reference: np.ndarray | None = None,
) -> Verification:
    """Is the probe this child (`gallery` + `child_id`) or the same person as `reference`?

    Against a child the score is aggregated over its templates like identify's;
    no margin applies (there is no competitor in a 1:1 question).
    """
    probe = np.asarray(probe, dtype=np.float32).reshape(-1)
    if reference is not None:
        if gallery is not None or child_id is not None:
            raise ValueError("verify against a reference vector or a child, not both")
        score = float(probe @ np.asarray(reference, dtype=np.float32).reshape(-1))
        return Verification(decide(score, None, settings), score)
    if gallery is None or child_id is None:
        raise ValueError("verify needs a reference vector, or a gallery and a child id")
    scored = gallery.child_scores(probe, [child_id])
    if not scored:
        raise UnknownChild(child_id)
    best = scored[0]
    return Verification(decide(best.score, None, settings), best.score, best.face_id, best.n_templates)
