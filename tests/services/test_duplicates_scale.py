"""The duplicates report (GET /review/duplicates): block matrix products, same answer as brute force.

`find_duplicates` compares all templates at once, by blocks, and stops
looking below the running cutoff once `limit` pairs are known; the reference
(duplicates_reference.py) walks the definition face by face, child by child.
Both must give the same pairs, faces and order (scores to float32 rounding),
for both ways of scoring a child, many thresholds and limits.
"""

from __future__ import annotations

import numpy as np
import pytest

from childface.config import Settings
from childface.db import Database
from childface.db.models import ChildStatus, ReviewState
from childface.services import duplicates
from childface.services.duplicates import duplicate_pairs, find_duplicates
from childface.services.gallery import ensure_embedding_model

from .duplicates_reference import brute_force_pairs
from .faces import DIM, add_child, add_face, set_child_status, unit

THRESHOLDS = (0.97, 0.9, 0.75, 0.3, -1.0)
LIMITS = (1, 4, 500)


def synthetic_gallery(rng: np.random.Generator, n_children: int) -> list[tuple[int, int, np.ndarray]]:
    """(face id, child id, vector): 1-4 templates per child; every third child shares another's centre."""
    centres = unit(rng.standard_normal((n_children, DIM)))
    templates = []
    face_id = 1
    for child in range(1, n_children + 1):
        centre = centres[(child * 7) % n_children] if child % 3 == 0 else centres[child - 1]
        for _ in range(int(rng.integers(1, 5))):
            noise = rng.standard_normal(DIM) * rng.uniform(0.2, 0.8) / np.sqrt(DIM)
            templates.append((face_id, child, unit(centre + noise)))
            face_id += 1
    return templates


Pair = tuple[int, int, float, int, int]  # child a, child b, score, face a, face b


def same(found: list[Pair], expected: list[Pair]) -> bool:
    """Same pairs with the same faces in the same order, scores equal to float32 rounding."""
    return [f[:2] + f[3:] for f in found] == [e[:2] + e[3:] for e in expected] and all(
        abs(f[2] - e[2]) <= 2e-6 for f, e in zip(found, expected, strict=True)
    )


def test_report_matches_brute_force_on_a_real_gallery(database: Database, settings: Settings) -> None:
    """Templates written to the DB as enrollment writes them; only searchable ones count."""
    model_row, other_model = (
        ensure_embedding_model(database, key=f"dup-test:{i}", name="t", weights_sha256=f"{i}" * 64, dim=DIM)
        for i in (0, 1)
    )
    rng = np.random.default_rng(7)
    children = {c: add_child(database, f"child-{c}") for c in range(1, 19)}
    searchable = []
    for _, child, vector in synthetic_gallery(rng, 18):
        face_id = add_face(database, child_id=children[child], model_row=model_row, vector=vector)
        searchable.append((face_id, children[child], vector))
    # not searchable: an archived child's template, a face in review, another model's embedding;
    # each is a near copy of a searchable template, so each would form a pair if it counted
    archived = add_child(database, "archived")
    copy_of = searchable[0][2]
    add_face(database, child_id=archived, model_row=model_row, vector=copy_of)
    set_child_status(database, archived, ChildStatus.archived)
    add_face(database, child_id=add_child(database, "queued"), model_row=model_row, vector=copy_of,
             state=ReviewState.pending_review)
    add_face(database, child_id=add_child(database, "other model"), model_row=other_model, vector=copy_of)

    names = {cid: f"child-{c}" for c, cid in children.items()}
    for child_score in ("max", "mean2"):
        scoring = settings.model_copy(update={"child_score": child_score})
        for threshold in THRESHOLDS:
            for limit in LIMITS:
                report = find_duplicates(
                    db=database, settings=scoring, model_db_id=model_row, threshold=threshold, limit=limit
                )
                found = [(p.a.child_id, p.b.child_id, p.score, p.a.face_id, p.b.face_id) for p in report]
                expected = [
                    (a, b, round(score, 6), fa, fb)
                    for a, b, score, fa, fb in brute_force_pairs(
                        searchable, threshold=threshold, limit=limit, child_score=child_score
                    )
                ]
                assert same(found, expected), (child_score, threshold, limit, found[:5], expected[:5])
                assert all((p.a.name, p.b.name) == (names[p.a.child_id], names[p.b.child_id]) for p in report)
    assert find_duplicates(db=database, settings=settings, model_db_id=model_row, threshold=-1.0, limit=500)
    default = find_duplicates(db=database, settings=settings, model_db_id=model_row)
    assert all(p.score >= settings.review_threshold for p in default)


@pytest.mark.parametrize("block", [1, 97, 10_000_000])
def test_blocks_and_running_cutoff_do_not_change_the_answer(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    """One row per block, odd blocks, one block: the cutoff that rises between blocks loses nothing."""
    monkeypatch.setattr(duplicates, "_BLOCK_SIMILARITIES", block * 300)
    monkeypatch.setattr(duplicates, "_ROWS_PER_MERGE", 3)
    rng = np.random.default_rng(block)
    templates = synthetic_gallery(rng, 120)
    rng.shuffle(templates)  # the report must not depend on the order templates come in
    face_ids = np.array([t[0] for t in templates])
    child_ids = np.array([t[1] for t in templates])
    vectors = np.stack([t[2] for t in templates])
    for child_score in ("max", "mean2"):
        for threshold in (0.9, 0.5, -1.0):
            for limit in (1, 10, 60):
                options = {"threshold": threshold, "limit": limit, "child_score": child_score}
                found = [
                    (p.a, p.b, p.score, p.face_a, p.face_b)
                    for p in duplicate_pairs(face_ids, child_ids, vectors, **options)
                ]
                assert same(found, brute_force_pairs(templates, **options)), options
