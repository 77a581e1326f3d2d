"""Gallery at scale: vectorised child scores, one face search per query, the bulk path, and a
server that is ready from an exact index while HNSW is still being built."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from sqlalchemy import func, literal, select, text, union_all

from childface.api.app import create_app
from childface.bench.api import serve_in_thread
from childface.bench.scale import synthetic_batches
from childface.bench.search import face_like_data
from childface.config import Settings
from childface.db import Database
from childface.db.models import AuditEvent, AuditEventChild, Embedding, Face
from childface.db.session import Actor
from childface.index import FaissIndex, create_index
from childface.services.bulk_gallery import BULK_ACTION, bulk_insert
from childface.services.gallery import ChildIndex, Gallery, ensure_embedding_model, fetch_batches
from childface.services.runtime import Runtime

from .faces import DIM

SYSTEM = Actor("system", "test")


def _reference_scores(children: dict[int, list[int]], vectors: dict[int, np.ndarray], query, rule: str):
    """The per-child loop the vectorised code replaced: (child, score, best face, n) best first."""
    out = []
    for child, faces in children.items():
        faces = sorted(faces)
        sims = np.asarray([vectors[f] @ query for f in faces], dtype=np.float32)
        order = np.argsort(-sims, kind="stable")
        score = sims[order[0]]
        if rule == "mean2" and len(faces) > 1:
            score = (sims[order[0]] + sims[order[1]]) / 2.0
        out.append((child, float(score), faces[int(order[0])], len(faces)))
    return sorted(out, key=lambda c: (-c[1], c[0]))


@pytest.mark.parametrize("rule", ["max", "mean2"])
def test_vectorised_child_scores_equal_the_per_child_loop(rule: str) -> None:
    rng = np.random.default_rng(3)
    data = face_like_data(600, DIM, n_queries=10, per_identity=4, seed=3)
    face_ids = np.arange(600) * 3 + 7
    owner = rng.integers(100, 220, 600)  # uneven: some children 1 template, some many
    children = ChildIndex(create_index(Settings(_env_file=None, device="cpu"), "m", DIM), rule)
    children.upsert(face_ids[:400], owner[:400], data.gallery[:400])
    children.upsert(face_ids[400:], owner[400:], data.gallery[400:])  # goes through the recent log
    children.remove(face_ids[::9].tolist())  # removals leave stale entries the scores must skip
    moved = np.setdiff1d(face_ids[1::11], face_ids[::9])
    children.map_faces(moved, np.full(len(moved), 999))  # a reassigned face counts for its new child
    current = dict(zip(face_ids.tolist(), owner.tolist(), strict=True))
    for f in face_ids[::9].tolist():
        del current[f]
    for f in moved.tolist():
        current[f] = 999
    by_child: dict[int, list[int]] = {}
    for f, c in current.items():
        by_child.setdefault(c, []).append(f)
    vectors = dict(zip(face_ids.tolist(), data.gallery, strict=True))
    asked = [999, 150, 101, 150, 12345]  # duplicates and an unknown child
    for query in data.queries:
        got = [(c.child_id, c.score, c.face_id, c.n_templates) for c in children.child_scores(query, asked)]
        want = _reference_scores(
            {c: by_child[c] for c in dict.fromkeys(asked) if c in by_child}, vectors, query, rule
        )
        assert [g[0] for g in got] == [w[0] for w in want]
        assert [g[2:] for g in got] == [w[2:] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=1e-6)


class _CountingIndex(FaissIndex):
    """A real FAISS index that counts its searches."""

    searches = 0

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.searches += 1
        return super().search(vectors, k)


def test_search_asks_the_face_index_once_even_when_one_child_fills_the_top() -> None:
    rng = np.random.default_rng(5)
    query = rng.standard_normal(DIM).astype(np.float32)
    query /= np.linalg.norm(query)
    # child 1: 60 templates all closer to the query than anyone else's
    near = query + 0.05 * rng.standard_normal((60, DIM)).astype(np.float32)
    others = rng.standard_normal((200, DIM)).astype(np.float32)
    vectors = np.concatenate([near, others])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    owners = np.r_[np.ones(60, dtype=np.int64), np.arange(200) // 4 + 10]
    index = _CountingIndex("m", DIM, approximate_above=10**9)
    children = ChildIndex(index)
    children.upsert(np.arange(260), owners, vectors)
    found = children.search(query[None], k=4)[0]
    assert index.searches == 1
    sims = vectors @ query
    per_child = {c: max(s for o, s in zip(owners, sims, strict=True) if o == c) for c in set(owners.tolist())}
    expected = sorted(per_child, key=lambda c: (-per_child[c], c))[:4]
    assert [c.child_id for c in found] == expected
    assert found[0].child_id == 1 and found[0].n_templates == 60


def test_bulk_insert_writes_rows_and_one_event_per_batch_and_the_gallery_follows(
    database: Database, settings: Settings, make_gallery: Callable[..., Gallery]
) -> None:
    model_row = ensure_embedding_model(
        database, key="bulk-model:1", name="bulk", weights_sha256="0" * 64, dim=DIM
    )
    gallery = make_gallery(key="bulk-model:1")
    gallery.start()
    data = face_like_data(250, DIM, n_queries=5, per_identity=5, seed=8)
    result = bulk_insert(
        database, SYSTEM, model_row, DIM, synthetic_batches(data.gallery, tag="t", per_child=5)
    )
    assert len(result.face_ids) == 250 and len(result.child_ids) == 50 and result.batches == 1
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(Face)) == 250
        assert session.scalar(select(func.count()).select_from(Embedding)) == 250
        events = session.execute(select(AuditEvent).where(AuditEvent.action == BULK_ACTION)).scalars().all()
        assert len(events) == 1 and events[0].face_ids == sorted(result.face_ids)
        histories = session.scalar(select(func.count()).select_from(AuditEventChild))
        assert histories == 50  # every new child has the batch in its history
    assert gallery.catch_up() == 1 and gallery.count == 250
    # a second bulk insert after the first: fresh ids, the gallery catches up again
    extra = face_like_data(20, DIM, n_queries=1, seed=9).gallery
    more = bulk_insert(database, SYSTEM, model_row, DIM, synthetic_batches(extra, tag="u"))
    assert min(more.face_ids) > max(result.face_ids) and gallery.catch_up() == 1 and gallery.count == 270
    top = gallery.search(data.gallery[7][None], k=1)[0][0]
    assert top.face_id == result.face_ids[7]
    assert gallery.check().clean


@pytest.mark.slow  # a real server with the real models: 1.2 s quiet, 6.5 s at load average ~12
def test_server_is_ready_from_the_exact_index_before_hnsw_is_built(
    settings: Settings,
    pipeline,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    """Above the switch point, with no snapshot: /readyz answers ready while the build is held."""
    if "sqlite" not in settings.database_url:
        pytest.skip("one back end is enough: readiness does not depend on it (bulk path: test above)")
    settings = settings.model_copy(update={"index_approximate_above": 500, "index_snapshot_interval_s": 0.2})
    runtime = Runtime(settings, pipeline=pipeline)
    from childface.db.migrate import upgrade

    upgrade(runtime.db)
    model_row = ensure_embedding_model(
        runtime.db, key=pipeline.model_id, name="dlib", weights_sha256="0" * 64, dim=pipeline.embedder.dim
    )
    data = face_like_data(2000, pipeline.embedder.dim, n_queries=3, seed=9)
    bulk_insert(
        runtime.db, SYSTEM, model_row, pipeline.embedder.dim, synthetic_batches(data.gallery, tag="r")
    )
    building, release = threading.Event(), threading.Event()
    real_rebuild = FaissIndex.rebuild_if_needed

    def held_rebuild(index: FaissIndex) -> bool:
        if index.needs_rebuild():
            building.set()
            assert release.wait(30)
        return real_rebuild(index)

    monkeypatch.setattr(FaissIndex, "rebuild_if_needed", held_rebuild)
    runtime.start(autosave=True)
    try:
        with serve_in_thread(create_app(runtime.settings, runtime)) as url:
            ready = httpx.get(f"{url}/readyz", timeout=30)
            index = runtime.gallery._children.index  # noqa: SLF001
            assert ready.status_code == 200, ready.text
            assert isinstance(index, FaissIndex) and index.backend == "flat" and index.count == 2000
            assert building.wait(10)  # the background thread has started the switch ...
            assert index.backend == "flat"  # ... and the server answered before it finished
            release.set()
            deadline = time.monotonic() + 30
            while index.backend != "hnsw" and time.monotonic() < deadline:
                time.sleep(0.05)
            assert index.backend == "hnsw"
            assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
            top = runtime.gallery.search(data.gallery[3][None], k=1)[0][0]
            assert top.n_templates == 5
    finally:
        release.set()
        runtime.close()


def test_offline_rebuild_switches_to_hnsw_before_the_snapshot(
    database: Database, settings: Settings, make_gallery: Callable[..., Gallery]
) -> None:
    """What `childface reindex` does: a rebuild is exact at first; switch_store_now builds HNSW, so
    the snapshot a server then loads is the graph."""
    model_row = ensure_embedding_model(database, key="reindex:1", name="r", weights_sha256="0" * 64, dim=DIM)
    data = face_like_data(300, DIM, n_queries=5, seed=10)
    bulk_insert(database, SYSTEM, model_row, DIM, synthetic_batches(data.gallery, tag="x"))
    small = settings.model_copy(update={"index_approximate_above": 100})
    gallery = Gallery(db=database, settings=small, model_key="reindex:1", dim=DIM)
    assert gallery.rebuild() == 300 and gallery._children.index.backend == "flat"  # noqa: SLF001
    assert gallery.switch_store_now() and gallery._children.index.backend == "hnsw"  # noqa: SLF001
    gallery.save()
    loaded = Gallery(db=database, settings=small, model_key="reindex:1", dim=DIM)
    assert loaded.start().startswith("loaded snapshot") and loaded._children.index.backend == "hnsw"  # noqa: SLF001
    assert loaded.search(data.gallery[4][None], k=1)[0][0].n_templates == 5
    assert loaded.check().clean


def test_fetch_batches_streams_through_a_server_side_cursor_on_postgresql(database: Database) -> None:
    rows = union_all(*(select(literal(i).label("n")) for i in range(5))).subquery()
    with database.session() as session:
        batches = fetch_batches(session, select(rows.c.n).order_by(rows.c.n))
        first = next(batches)  # suspended mid-read: the cursor is open now
        if session.get_bind().dialect.name == "postgresql":
            # a plain psycopg cursor has the whole result in memory already and declares nothing
            open_cursors = session.execute(text("SELECT name FROM pg_cursors")).scalars().all()
            assert any(name.startswith("childface_read_") for name in open_cursors), open_cursors
        got = [row[0] for batch in [first, *batches] for row in batch]
    assert got == [0, 1, 2, 3, 4]


def test_child_index_faces_of_follows_moves_and_removals_without_a_csr_rebuild() -> None:
    n = 5000  # past the log's minimum: loading builds the CSR once
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((n, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    face_ids = np.arange(n, dtype=np.int64) + 1
    children = ChildIndex(FaissIndex("m", 16, approximate_above=10**9))
    children.load(face_ids, face_ids % 700 + 1, vectors)
    csr = children._csr_face  # noqa: SLF001
    assert len(csr) == n
    children.map_faces([1, 2, 3], [5, 5, 9999])  # moves, one to a new child
    children.map_faces([2], [2 % 700 + 1])  # and back to where the CSR has it
    children.remove([4, 5, 701])
    children.upsert([n + 1], [5], vectors[:1])  # a new face in the log
    children.remove([n + 1])  # and out again
    children.map_faces([3], [5])
    assert children._csr_face is csr, "no rebuild: the log and the face -> child map did the work"  # noqa: SLF001
    face_list, owner_list = children.faces()
    asked = np.asarray([1, 2, 3, 4, 5, 6, 9999, 12345], dtype=np.int64)
    for child in asked.tolist():
        got_faces, got_owners = children._faces_of(np.asarray([child]))  # noqa: SLF001
        assert got_faces.tolist() == face_list[owner_list == child].tolist(), child
        assert set(got_owners.tolist()) <= {child}
    got_faces, got_owners = children._faces_of(asked)  # noqa: SLF001
    want = sorted((int(c), int(f)) for f, c in zip(face_list, owner_list, strict=True) if c in asked)
    assert list(zip(got_owners.tolist(), got_faces.tolist(), strict=True)) == want
    assert children.max_templates() == max(np.bincount(owner_list).max(), 1)
