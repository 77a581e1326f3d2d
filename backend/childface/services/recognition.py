"""Recognition decisions: 1:N identify and 1:1 verify, with one three-way vocabulary and its reasons.

Scores are cosine similarities of unit embeddings (DESIGN.md invariant 4),
aggregated per child over its templates (`Settings.child_score`). The decision
rule lives here, in `rule`, and nowhere else: `/recognize` and evaluation
(`identify`), `/verify` (`verify`) and video tracks (`services.watch.vote`,
through `judge`) all call it. Its settings (`Settings`):

- `accept_threshold`: at or above it a score is strong enough to act on;
- `match_margin` (identify): the best child must lead the best-scoring other,
  unrelated child by at least this much;
- `sibling_margin` / `twin_margin`: ... and a marked sibling / twin of it by at
  least this much (`services.relations`; relatives are scored even when they
  are not among the top candidates);
- `review_threshold`: at or above it (and not a match) a person should look.

Decisions, and their reason codes (stable: clients branch on them; a `match`
has none, every other decision at least one):

- ``match``: best >= accept, every margin met, the face passed the quality gate;
- ``review``: best >= review but not a match; reasons, in this order:
  ``below_accept`` (score under the accept threshold), ``small_margin`` (an
  unrelated child within `match_margin`, or a relative beyond its own margin but
  within `match_margin`), ``sibling`` (a marked sibling within `sibling_margin`),
  ``twin`` (the twin within `twin_margin`), ``several_candidates`` (more than
  one child at or above the review threshold; given with the others, never
  alone), ``quality:<code>`` (the face failed the quality gate: ``quality:blurred``,
  ``quality:too_small``, ... as `vision.quality` names the failed checks);
- ``unknown``: best < review; ``below_review``, or ``no_templates`` when the
  gallery has nobody to compare with, plus any ``quality:<code>``.

A face that fails the quality gate is never matched automatically: its
embedding is less reliable, so a person confirms it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from childface.config import Settings
from childface.services.gallery import ChildCandidate

Decision = Literal["match", "review", "unknown"]

BELOW_ACCEPT = "below_accept"
BELOW_REVIEW = "below_review"
SMALL_MARGIN = "small_margin"
SEVERAL_CANDIDATES = "several_candidates"
SIBLING = "sibling"
TWIN = "twin"
NO_TEMPLATES = "no_templates"
#: quality reasons are `quality:<check>` with the quality gate's check (`vision.quality` codes)
QUALITY = "quality"

#: child id -> {related child id: "sibling" | "twin"} (`services.relations.RelationBook`)
Kin = Mapping[int, Mapping[int, str]]


class ChildSearch(Protocol):
    """What identify needs: a `Gallery`, or an in-memory `ChildIndex` (evaluation)."""

    def search(self, vectors: np.ndarray, k: int) -> list[list[ChildCandidate]]: ...

    def child_scores(self, vector: np.ndarray, child_ids: list[int]) -> list[ChildCandidate]: ...


class QualityVerdict(Protocol):
    """The part of `vision.quality.QualityReport` a decision reads."""

    passed: bool
    reasons: list[str]


class UnknownChild(LookupError):
    """Verify against a child that has no searchable templates (absent, archived or no faces)."""

    def __init__(self, child_id: int) -> None:
        super().__init__(f"child {child_id} has no enrolled faces to verify against")
        self.child_id = child_id


@dataclass(frozen=True)
class Ruling:
    decision: Decision
    #: reason codes (module docstring); empty for a match
    reasons: list[str] = field(default_factory=list)


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
    reasons: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Verification:
    decision: Decision
    score: float
    #: the child's best-matching template (None for a vector-to-vector comparison)
    face_id: int | None = None
    n_templates: int | None = None
    reasons: list[str] = field(default_factory=list)


def quality_flaws(quality: QualityVerdict | None) -> list[str]:
    """The quality gate's failed checks of a face (empty when it passed), as `rule` takes them."""
    if quality is None or quality.passed:
        return []
    return list(quality.reasons) or ["low_quality"]


def quality_reasons(flaws: Iterable[str]) -> list[str]:
    """Failed quality checks as reason codes: `blurred` -> `quality:blurred`."""
    return [f"{QUALITY}:{code}" for code in flaws]


def rule(
    score: float,
    settings: Settings,
    *,
    margin: float | None = None,
    relatives: Iterable[tuple[str, float]] = (),
    crowded: bool = False,
    quality: Sequence[str] = (),
) -> Ruling:
    """The decision rule (module docstring), for the best child's `score`.

    `margin`: its lead over the best unrelated other child (None: there is none);
    `relatives`: (kind, lead) over each marked sibling or twin that has a score;
    `crowded`: more than one child scored at or above the review threshold;
    `quality`: the face's failed quality checks (`quality_flaws`).
    """
    flaws = quality_reasons(quality)
    if score < settings.review_threshold:
        return Ruling("unknown", [BELOW_REVIEW, *flaws])
    reasons = [BELOW_ACCEPT] if score < settings.accept_threshold else []
    close = margin is not None and margin < settings.match_margin
    kinds: set[str] = set()
    for kind, lead in relatives:
        needed = settings.twin_margin if kind == TWIN else settings.sibling_margin
        if lead < needed:
            kinds.add(TWIN if kind == TWIN else SIBLING)
        elif lead < settings.match_margin:
            close = True  # a relative is no easier to tell apart than any other child
    reasons += [SMALL_MARGIN] * close + [k for k in (SIBLING, TWIN) if k in kinds]
    if not reasons and not flaws:
        return Ruling("match")
    return Ruling("review", reasons + [SEVERAL_CANDIDATES] * crowded + flaws)


def decide(score: float, margin: float | None, settings: Settings) -> Decision:
    """The three-way rule without relatives or quality; `margin` None means there is no runner-up."""
    return rule(score, settings, margin=margin).decision


def judge(
    ranked: Sequence[tuple[int, float]],
    settings: Settings,
    *,
    kin: Kin | None = None,
    score_missing: Callable[[list[int]], Mapping[int, float]] | None = None,
    quality: Sequence[str] = (),
) -> Ruling:
    """`rule` for a ranked candidate list ((child id, score), best first, not empty).

    The best child's marked relatives that are not in `ranked` are scored with
    `score_missing` (a relative without templates has no score and no say).
    """
    best_child, best = ranked[0]
    relatives = dict((kin or {}).get(best_child, {}))
    scores = dict(ranked)
    missing = [child for child in relatives if child not in scores]
    if missing and score_missing is not None:
        scores.update(score_missing(missing))
    unrelated = next((s for c, s in ranked[1:] if c not in relatives), None)
    return rule(
        best,
        settings,
        margin=None if unrelated is None else best - unrelated,
        relatives=[(kind, best - scores[child]) for child, kind in relatives.items() if child in scores],
        crowded=sum(s >= settings.review_threshold for s in scores.values()) > 1,
        quality=quality,
    )


def identify(
    gallery: ChildSearch,
    vectors: np.ndarray,
    settings: Settings,
    k: int | None = None,
    *,
    kin: Kin | None = None,
    quality: Sequence[Sequence[str]] | None = None,
) -> list[Identification]:
    """Who is each probe (rows of `vectors`, unit, (q, dim))? Top-k children, a decision and its reasons.

    `kin`: the marked siblings and twins; `quality`: each probe's failed quality checks.
    """
    queries = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    k = max(2, k or settings.top_k)  # the runner-up is needed for the margin
    out = []
    for i, candidates in enumerate(gallery.search(queries, k) if len(queries) else []):
        flaws = quality[i] if quality is not None else ()
        if not candidates:
            reasons = [NO_TEMPLATES, *quality_reasons(flaws)]
            out.append(Identification("unknown", None, -1.0, None, [], reasons))
            continue
        query = queries[i]

        def score_missing(child_ids: list[int], query: np.ndarray = query) -> dict[int, float]:
            return {c.child_id: c.score for c in gallery.child_scores(query, child_ids)}

        best = candidates[0]
        ruling = judge(
            [(c.child_id, c.score) for c in candidates], settings, kin=kin, score_missing=score_missing,
            quality=flaws,
        )
        margin = best.score - candidates[1].score if len(candidates) > 1 else None
        matched = best.child_id if ruling.decision == "match" else None
        out.append(Identification(ruling.decision, matched, best.score, margin, candidates, ruling.reasons))
    return out


def verify(
    probe: np.ndarray,
    settings: Settings,
    *,
    gallery: ChildSearch | None = None,
    child_id: int | None = None,
    reference: np.ndarray | None = None,
    kin: Kin | None = None,
    quality: Sequence[str] = (),
) -> Verification:
    """Is the probe this child (`gallery` + `child_id`) or the same person as `reference`?

    Against a child the score is aggregated over its templates like identify's;
    no margin applies against unrelated children (there is no competitor in a 1:1
    question), but the child's marked siblings and twins are scored too and must
    trail it by their margins, as in identify.
    """
    probe = np.asarray(probe, dtype=np.float32).reshape(-1)
    if reference is not None:
        if gallery is not None or child_id is not None:
            raise ValueError("verify against a reference vector or a child, not both")
        score = float(probe @ np.asarray(reference, dtype=np.float32).reshape(-1))
        ruling = rule(score, settings, quality=quality)
        return Verification(ruling.decision, score, reasons=ruling.reasons)
    if gallery is None or child_id is None:
        raise ValueError("verify needs a reference vector, or a gallery and a child id")
    relatives = dict((kin or {}).get(child_id, {}))
    scored = {c.child_id: c for c in gallery.child_scores(probe, [child_id, *relatives])}
    own = scored.get(child_id)
    if own is None:
        raise UnknownChild(child_id)
    ruling = rule(
        own.score,
        settings,
        relatives=[(kind, own.score - scored[c].score) for c, kind in relatives.items() if c in scored],
        crowded=sum(c.score >= settings.review_threshold for c in scored.values()) > 1,
        quality=quality,
    )
    return Verification(ruling.decision, own.score, own.face_id, own.n_templates, ruling.reasons)
