"""`childface bench duplicates`: time of the duplicates report over a gallery of N templates.

Builds a throw-away SQLite database with N synthetic templates (unit vectors
of the default embedder's size, two per child at cosine ~0.9 to the child's
centre, and 1 % of the children enrolled a second time under another child:
the pairs to find), written as enrollment writes them (children, images,
faces, embeddings, one audit event per batch). Then times `find_duplicates`,
the function behind GET /review/duplicates, from the DB read to the named
pairs. No model is loaded: the vectors are synthetic.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from childface.config import Settings
from childface.db.migrate import upgrade
from childface.db.models import Child, Embedding, Face, Image, ImageSource, ReviewState
from childface.db.session import Actor, Database
from childface.services.duplicates import find_duplicates
from childface.services.gallery import ensure_embedding_model

DIM = 128
_ACTOR = Actor("system", "bench-duplicates")
_BATCH = 1000


def run_duplicates_benchmark(settings: Settings, *, faces: int, repeat: int = 3) -> dict[str, Any]:
    """Build the gallery, run the report `repeat` times; the figures as a dict."""
    with tempfile.TemporaryDirectory(prefix="childface-bench-duplicates-") as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
        try:
            upgrade(db)
            model_db_id = ensure_embedding_model(
                db, key="bench-synthetic:0", name="synthetic", weights_sha256="0" * 64, dim=DIM
            )
            started = time.perf_counter()
            children, planted = _build_gallery(db, model_db_id, faces)
            build_seconds = time.perf_counter() - started
            timings, pairs = [], []
            for _ in range(repeat):
                started = time.perf_counter()
                pairs = find_duplicates(db=db, settings=settings, model_db_id=model_db_id, limit=500)
                timings.append(time.perf_counter() - started)
        finally:
            db.dispose()
    return {
        "faces": faces,
        "children": children,
        "planted_duplicates": planted,
        "threshold": settings.review_threshold,
        "child_score": settings.child_score,
        "pairs_found": len(pairs),
        "seconds_best": min(timings),
        "seconds_all": timings,
        "build_seconds": build_seconds,
        "cpu_count": os.cpu_count(),
    }


def _build_gallery(db: Database, model_db_id: int, n_faces: int) -> tuple[int, int]:
    """Write the synthetic templates; (children, planted duplicate children)."""
    rng = np.random.default_rng(0)
    n_children = max(2, n_faces // 2)
    planted = max(1, n_children // 100)
    centres = _unit(rng.standard_normal((n_children, DIM)))
    # the last `planted` children are second enrollments of the first ones
    centres[n_children - planted :] = centres[:planted]
    owner = np.arange(n_faces) % n_children
    vectors = _unit(centres[owner] + rng.standard_normal((n_faces, DIM)) * 0.35 / np.sqrt(DIM))
    with db.unit_of_work(_ACTOR) as uow:
        rows = [Child(external_id=f"bench-{i}", display_name=f"Bench child {i}") for i in range(n_children)]
        uow.session.add_all(rows)
        uow.session.flush()
        child_ids = [row.id for row in rows]
        uow.audit("bench.children", target_type="child", target_id=None)
    for start in range(0, n_faces, _BATCH):
        with db.unit_of_work(_ACTOR) as uow:
            added = []
            for i in range(start, min(n_faces, start + _BATCH)):
                image = Image(sha256=secrets.token_hex(32), path="bench/none.jpg", width=640, height=480,
                              source=ImageSource.api, uploaded_by=str(_ACTOR))
                face = Face(image=image, child_id=child_ids[owner[i]], box_x1=0.0, box_y1=0.0, box_x2=100.0,
                            box_y2=100.0, landmarks=[[0.0, 0.0]] * 5, detector_score=0.99, quality_score=0.9,
                            review_state=ReviewState.enrolled)
                uow.session.add(face)
                added.append((face, vectors[i]))
            uow.session.flush()
            uow.session.add_all(
                Embedding.of(face_id=face.id, model_id=model_db_id, vector=vector.astype("<f4").tobytes())
                for face, vector in added
            )
            uow.audit("bench.faces", target_type="face", target_id=None, face_ids=[f.id for f, _ in added])
    return n_children, planted


def _unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)).astype(np.float32)
