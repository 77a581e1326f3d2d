"""Identify and verify: the decision rule, child-score aggregation, and decisions on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from childface.config import Settings
from childface.db import Database
from childface.index import create_index
from childface.services.gallery import ChildIndex, ensure_embedding_model
from childface.services.recognition import UnknownChild, decide, identify, verify

from .faces import add_child, add_face, unit

ENROLLED = [f"t1_{i}" for i in range(6)]


def test_decision_rule() -> None:
    s = Settings(_env_file=None, accept_threshold=0.9, review_threshold=0.8, match_margin=0.05)
    assert decide(0.95, 0.10, s) == "match"
    assert decide(0.95, None, s) == "match"  # no runner-up: nothing to confuse it with
    assert decide(0.95, 0.01, s) == "review"  # strong but too close to another child
    assert decide(0.85, 0.5, s) == "review"
    assert decide(0.79, None, s) == "unknown"


def test_child_score_max_and_mean_of_best_two() -> None:
    dim = 4
    query = np.array([1, 0, 0, 0], dtype=np.float32)
    # child 7: templates at cosine 0.9, 0.5, 0.1; child 8: one template at 0.8
    cosines = {1: (7, 0.9), 2: (7, 0.5), 3: (7, 0.1), 4: (8, 0.8)}
    vectors = np.stack([unit([c, np.sqrt(1 - c * c), 0, 0]) for _, c in cosines.values()])
    results = {}
    for aggregation in ("max", "mean2"):
        children = ChildIndex(create_index(Settings(_env_file=None, device="cpu"), "m", dim), aggregation)
        children.upsert(list(cosines), [c for c, _ in cosines.values()], vectors)
        results[aggregation] = children.search(query[None], k=5)[0]
    best_max = results["max"][0]
    assert (best_max.child_id, round(best_max.score, 4), best_max.face_id, best_max.n_templates) == (
        7,
        0.9,
        1,
        3,
    )
    assert [(c.child_id, round(c.score, 4)) for c in results["mean2"]] == [(8, 0.8), (7, 0.7)]


@pytest.fixture
def real_gallery(database: Database, settings: Settings, pipeline, embeddings):  # noqa: ANN001, ANN201
    """t1.jpg's six people enrolled with two photos each, in the DB, behind a started Gallery."""
    from childface.services.gallery import Gallery

    embedder = pipeline.embedder
    model_row = ensure_embedding_model(
        database,
        key=pipeline.model_id,
        name=embedder.name,
        weights_sha256=embedder.weights_sha256,
        dim=embedder.dim,
    )
    child_of = {}
    for name in ENROLLED:
        child_of[name] = add_child(database, name)
        for vector in embeddings[name][:2]:
            add_face(database, child_id=child_of[name], model_row=model_row, vector=vector)
    gallery = Gallery(db=database, settings=settings, model_key=pipeline.model_id, dim=embedder.dim)
    gallery.start()
    return gallery, child_of


def test_identify_real_photos(real_gallery, embeddings, settings: Settings) -> None:  # noqa: ANN001
    gallery, child_of = real_gallery
    probes = np.concatenate([embeddings[name][2:] for name in ENROLLED])
    expected = [child_of[name] for name in ENROLLED for _ in range(4)]
    results = identify(gallery, probes, settings)
    assert [r.candidates[0].child_id for r in results] == expected  # rank-1 on every probe
    assert [r.decision for r in results] == ["match"] * len(expected)
    assert [r.child_id for r in results] == expected
    assert all(r.margin is not None and r.margin >= settings.match_margin for r in results)

    # people who were never enrolled: the photos as taken are unknown; no variant is ever a match
    # (a degraded, upscaled one may land in the review band, which is what that band is for)
    for stranger in ("tom_hanks", "astronaut"):
        results = identify(gallery, embeddings[stranger], settings)
        assert results[0].decision == "unknown", (stranger, results[0].score)
        assert all(r.decision != "match" and r.child_id is None and r.candidates for r in results)


def test_masks_give_no_face_to_identify(pipeline, real_gallery, settings: Settings) -> None:  # noqa: ANN001
    from .photos import insightface_images

    masks = sorted(insightface_images().glob("mask_*.jpg"))
    assert masks
    assert pipeline.process([p.read_bytes() for p in masks]) == [[] for _ in masks]
    gallery, _ = real_gallery
    assert identify(gallery, np.empty((0, 128), np.float32), settings) == []


def test_verify_real_photos(real_gallery, embeddings, settings: Settings) -> None:  # noqa: ANN001
    gallery, child_of = real_gallery
    probe = embeddings["t1_3"][4]
    same = verify(probe, settings, gallery=gallery, child_id=child_of["t1_3"])
    assert same.decision == "match" and same.n_templates == 2 and same.score >= settings.accept_threshold
    other = verify(embeddings["tom_hanks"][0], settings, gallery=gallery, child_id=child_of["t1_3"])
    assert other.decision == "unknown"
    pair = verify(embeddings["astronaut"][0], settings, reference=embeddings["astronaut"][3])
    assert pair.decision == "match" and pair.face_id is None
    assert verify(embeddings["astronaut"][0], settings, reference=embeddings["t1_0"][0]).decision == "unknown"
    with pytest.raises(UnknownChild):
        verify(probe, settings, gallery=gallery, child_id=10**9)
    with pytest.raises(ValueError):
        verify(probe, settings, gallery=gallery, child_id=1, reference=probe)
