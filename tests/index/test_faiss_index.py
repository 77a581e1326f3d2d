"""FaissIndex against a numpy brute-force oracle: exact and HNSW stores, upsert, removal, switching."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from childface.bench.search import face_like_data
from childface.index import PAD_ID, FaissIndex, TorchExactIndex, VectorIndex

from .conftest import brute_force, unit_vectors

DIM = 32


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)]))


def make_index(backend: str, approximate_above: int = 100) -> VectorIndex:
    if backend == "torch":
        return TorchExactIndex("model-a", DIM, device="cpu")
    above = 10**9 if backend == "flat" else approximate_above
    return FaissIndex(
        "model-a", DIM, approximate_above=above, hnsw_m=16, hnsw_ef_construction=80, hnsw_ef_search=64
    )


def fill(index: VectorIndex, ids: np.ndarray, vectors: np.ndarray) -> None:
    """Add, then let a FAISS index build HNSW as its background thread would (`add` never does)."""
    index.add(ids, vectors)
    if isinstance(index, FaissIndex):
        index.rebuild_if_needed()


def test_exact_search_equals_brute_force(gallery):
    ids, vectors = gallery
    index = make_index("flat")
    index.add(ids, vectors)
    queries = unit_vectors(50, DIM, seed=2)
    got_ids, got_sims = index.search(queries, 10)
    want_ids, want_sims = brute_force(ids, vectors, queries, 10)
    assert index.backend == "flat"
    np.testing.assert_allclose(got_sims, want_sims, atol=1e-5)
    # random floats have no exact ties at this size: the ids must match one for one
    np.testing.assert_array_equal(got_ids, want_ids)
    assert got_ids.dtype == np.int64 and got_sims.dtype == np.float32


@pytest.mark.parametrize("backend", ["flat", "hnsw", "torch"])
def test_removed_faces_are_never_returned(gallery, backend):
    ids, vectors = gallery
    index = make_index(backend)
    fill(index, ids, vectors)
    gone = ids[::7]
    assert index.remove(gone) == len(gone)
    assert index.count == len(ids) - len(gone)
    keep = ~np.isin(ids, gone)
    # query with the removed faces themselves: the worst case for a stale entry
    found, _ = index.search(vectors[::7], 10)
    assert not np.isin(found, gone).any()
    want, _ = brute_force(ids[keep], vectors[keep], vectors[::7], 10)
    assert recall_at(found, want) >= (0.95 if backend == "hnsw" else 1.0)
    np.testing.assert_array_equal(index.ids(), np.sort(ids[keep]))


def test_hnsw_recall_on_random_data(gallery):
    ids, vectors = gallery
    index = make_index("hnsw")
    fill(index, ids, vectors)
    assert index.backend == "hnsw"
    queries = unit_vectors(100, DIM, seed=3)
    found, sims = index.search(queries, 10)
    want, _ = brute_force(ids, vectors, queries, 10)
    assert recall_at(found, want) >= 0.95
    assert (np.diff(sims, axis=1) <= 1e-6).all(), "results must be best first"


def test_hnsw_identity_recall_on_face_like_data():
    data = face_like_data(3000, DIM, n_queries=200, seed=4)
    index = make_index("hnsw")
    fill(index, np.arange(3000), data.gallery)
    found, _ = index.search(data.queries, 1)
    assert np.mean(data.labels[found[:, 0]] == data.query_labels) >= 0.99


@pytest.mark.parametrize("backend", ["flat", "hnsw", "torch"])
def test_upsert_replaces_never_duplicates(gallery, backend):
    ids, vectors = gallery
    index = make_index(backend)
    fill(index, ids[:500], vectors[:500])
    replacement = unit_vectors(1, DIM, seed=99)
    index.add(ids[:1], replacement)
    index.add(ids[:1], replacement)  # a replayed event: still one entry
    assert index.count == 500
    found, sims = index.search(replacement, 20)
    assert list(found[0]).count(ids[0]) == 1
    assert found[0, 0] == ids[0] and sims[0, 0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(index.vectors_of(ids[:1]), replacement, atol=1e-6)
    # the old vector must not find the face any more
    old_found, old_sims = index.search(vectors[:1], 1)
    assert old_found[0, 0] != ids[0] or old_sims[0, 0] < 0.99


@pytest.mark.parametrize("backend", ["flat", "hnsw", "torch"])
def test_remove_unknown_is_noop_and_contains(gallery, backend):
    ids, vectors = gallery
    index = make_index(backend)
    fill(index, ids[:300], vectors[:300])
    assert index.remove(np.array([1, 2, 10**12])) == 0
    assert index.remove(np.array([], dtype=np.int64)) == 0
    assert index.count == 300
    assert index.contains(int(ids[0])) and not index.contains(1)
    assert index.remove(ids[:2]) == 2 and index.remove(ids[:2]) == 0
    assert not index.contains(int(ids[0]))
    with pytest.raises(KeyError):
        index.vectors_of(ids[:1])


@pytest.mark.parametrize("backend", ["flat", "hnsw", "torch"])
def test_k_larger_than_count_is_padded(gallery, backend):
    ids, vectors = gallery
    index = make_index(backend, approximate_above=2)
    empty_ids, empty_sims = index.search(vectors[:2], 3)
    assert (empty_ids == PAD_ID).all() and np.isneginf(empty_sims).all()
    fill(index, ids[:5], vectors[:5])
    found, sims = index.search(vectors[:2], 8)
    assert found.shape == (2, 8) and sims.shape == (2, 8)
    assert (found[:, :5] >= 0).all() and (found[:, 5:] == PAD_ID).all()
    assert np.isfinite(sims[:, :5]).all() and np.isneginf(sims[:, 5:]).all()
    assert sorted(found[0, :5]) == sorted(ids[:5])


@pytest.mark.parametrize("backend", ["flat", "hnsw", "torch"])
def test_contract_violations_are_refused(gallery, backend):
    ids, vectors = gallery
    index = make_index(backend)
    with pytest.raises(ValueError, match="shape"):
        index.add(ids[:2], np.ones((2, DIM + 1), np.float32) / np.sqrt(DIM + 1))
    nan = vectors[:2].copy()
    nan[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.add(ids[:2], nan)
    with pytest.raises(ValueError, match="L2-normalised"):
        index.add(ids[:2], vectors[:2] * 1.5)
    with pytest.raises(ValueError, match="unique"):
        index.add(np.array([4, 4]), vectors[:2])
    with pytest.raises(ValueError, match=">= 0"):
        index.add(np.array([-1, 4]), vectors[:2])
    with pytest.raises(ValueError, match="ids for"):
        index.add(ids[:3], vectors[:2])
    with pytest.raises(ValueError, match="shape"):
        index.search(np.ones((1, 8), np.float32), 1)
    with pytest.raises(ValueError, match="k must be"):
        index.search(vectors[:1], 0)
    assert index.count == 0, "a refused call changes nothing"


def test_switches_to_hnsw_past_threshold_and_back(gallery):
    ids, vectors = gallery
    index = FaissIndex("model-a", DIM, approximate_above=1000, hnsw_m=16, hnsw_ef_search=64)
    index.add(ids[:800], vectors[:800])
    assert index.backend == "flat" and not index.needs_rebuild()
    index.add(ids[800:1500], vectors[800:1500])
    assert index.backend == "flat" and index.needs_rebuild()  # add never blocks on a build
    assert index.rebuild_if_needed()
    assert index.backend == "hnsw" and index.count == 1500 and not index.needs_rebuild()
    np.testing.assert_array_equal(index.ids(), ids[:1500])
    np.testing.assert_allclose(index.vectors_of(ids[[0, 900]]), vectors[[0, 900]])
    index.remove(ids[:1100])  # 400 left, below half the threshold: back to exact
    assert index.needs_rebuild() and index.rebuild_if_needed()
    assert index.backend == "flat" and index.dead == 0
    found, _ = index.search(vectors[1100:1110], 1)
    np.testing.assert_array_equal(found[:, 0], ids[1100:1110])


def test_hnsw_compacts_dead_nodes(gallery):
    ids, vectors = gallery
    index = make_index("hnsw")
    fill(index, ids, vectors)
    index.remove(ids[:300])
    assert index.dead == 300 and not index.needs_rebuild()  # 300 / 1700 < 0.2
    index.remove(ids[300:400])
    assert index.needs_rebuild() and index.rebuild_if_needed()
    assert index.backend == "hnsw" and index.dead == 0 and index.count == 1600
    found, _ = index.search(vectors[400:420], 1)
    np.testing.assert_array_equal(found[:, 0], ids[400:420])


def test_rebuild_runs_beside_searches_and_writes(gallery, monkeypatch):
    """Writes made during a background rebuild are journalled and survive the swap;
    searches are served from the old store meanwhile instead of waiting."""
    ids, vectors = gallery
    index = FaissIndex("model-a", DIM, approximate_above=1000, hnsw_m=16, hnsw_ef_search=64)
    index.add(ids[:900], vectors[:900])
    index.add(ids[900:1200], vectors[900:1200])
    building, release = threading.Event(), threading.Event()
    real_new_store = index._new_store

    def slow_new_store(kind):
        building.set()
        assert release.wait(10)
        return real_new_store(kind)

    monkeypatch.setattr(index, "_new_store", slow_new_store)
    worker = threading.Thread(target=index.rebuild_if_needed)
    worker.start()
    assert building.wait(10)
    found, _ = index.search(vectors[:3], 1)  # would deadlock if the build held the lock
    np.testing.assert_array_equal(found[:, 0], ids[:3])
    index.add(ids[1200:1300], vectors[1200:1300])
    index.remove(ids[:50])
    index.add(ids[60:61], vectors[2000 - 1 :])  # replace a face's vector mid-build
    release.set()
    worker.join(10)
    assert index.backend == "hnsw"
    np.testing.assert_array_equal(index.ids(), ids[50:1300])
    np.testing.assert_allclose(index.vectors_of(ids[60:61]), vectors[-1:])
    found, _ = index.search(vectors[1250:1260], 1)
    np.testing.assert_array_equal(found[:, 0], ids[1250:1260])


def test_concurrent_searches_and_adds_stay_consistent():
    index = FaissIndex("model-a", DIM, approximate_above=10**9)
    vectors = unit_vectors(4000, DIM, seed=7)
    errors: list[BaseException] = []

    def writer():
        for a in range(0, 4000, 100):
            index.add(np.arange(a, a + 100), vectors[a : a + 100])

    def reader():
        try:
            for _ in range(200):
                found, sims = index.search(vectors[:4], 5)
                assert (found[:, 0] == np.arange(4))[found[:, 0] >= 0].all()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and index.count == 4000


@pytest.mark.gpu
def test_gpu_search_wider_than_faiss_gpu_top_k_limit() -> None:
    # the gallery asks for up to 4096 faces; FAISS's GPU flat search refuses k > 2048
    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss-gpu is not installed or sees no GPU")
    vectors = unit_vectors(3000, 32, seed=21)
    ids = np.arange(3000, dtype=np.int64) + 10
    gpu_index = FaissIndex("m", 32, approximate_above=10**9, gpu_device=0)
    gpu_index.add(ids, vectors)
    queries = unit_vectors(3, 32, seed=22)
    got, sims = gpu_index.search(queries, 2500)
    want, want_sims = brute_force(ids, vectors, queries, 2500)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    assert (got[:, :10] == want[:, :10]).all() and (got >= 0).all()
    assert gpu_index.search(queries, 10)[0].tolist() == want[:, :10].tolist()  # narrow: on the GPU
