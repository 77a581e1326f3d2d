"""The vector-index contract (index/base.py), run unchanged over every backend.

FAISS exact, FAISS HNSW (switch point set low), torch exact and Milvus (Milvus
Lite, one data path for the run, one collection prefix per test). Each test
checks results against a numpy oracle; HNSW is held to recall instead of exact
ids where the contract allows approximation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from childface.index import (
    PAD_ID,
    FaissIndex,
    SnapshotMismatch,
    TorchExactIndex,
    VectorIndex,
)
from childface.index.milvus_index import MilvusIndex

from .conftest import brute_force, unit_vectors

DIM = 16
BACKENDS = ["faiss-flat", "faiss-hnsw", "torch-exact", "milvus"]


@dataclass
class Backend:
    name: str
    new: Callable[[str, int], VectorIndex]
    load: Callable[[Path, str, int], VectorIndex]

    @property
    def exact(self) -> bool:
        return self.name != "faiss-hnsw"

    def filled(self, ids: np.ndarray, vectors: np.ndarray, model_id: str = "model-a") -> VectorIndex:
        index = self.new(model_id, DIM)
        index.add(ids, vectors)
        if isinstance(index, FaissIndex):
            index.rebuild_if_needed()  # what the gallery's background thread does: switch to HNSW
        return index


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    name = request.param
    if name.startswith("faiss"):
        options = {
            "approximate_above": 10**9 if name == "faiss-flat" else 50,
            "hnsw_m": 16,
            "hnsw_ef_construction": 80,
            "hnsw_ef_search": 64,
        }
        cls: type[VectorIndex] = FaissIndex
    elif name == "torch-exact":
        options, cls = {"device": "cpu"}, TorchExactIndex
    else:
        uri, prefix = request.getfixturevalue("milvus_uri"), request.getfixturevalue("milvus_prefix")
        options, cls = {"uri": uri, "collection_prefix": prefix}, MilvusIndex
    return Backend(
        name,
        new=lambda model_id, dim: cls(model_id, dim, **options),
        load=lambda path, model_id, dim: cls.load(path, model_id=model_id, dim=dim, **options),
    )


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """300 random unit vectors under sparse face ids."""
    return np.arange(300, dtype=np.int64) * 7 + 3, unit_vectors(300, DIM, seed=11)


def assert_search_matches(index: VectorIndex, backend: Backend, ids, vectors, queries, k: int) -> None:
    got_ids, got_sims = index.search(queries, k)
    want_ids, want_sims = brute_force(ids, vectors, queries, k)
    assert got_ids.shape == got_sims.shape == (len(queries), k)
    assert got_ids.dtype == np.int64 and got_sims.dtype == np.float32
    assert (np.diff(got_sims, axis=1) <= 1e-6).all(), "not best first"
    if backend.exact:
        np.testing.assert_array_equal(got_ids, want_ids)
        np.testing.assert_allclose(got_sims, want_sims, atol=1e-5)
    else:
        recall = np.mean([len(np.intersect1d(g, w)) / k for g, w in zip(got_ids, want_ids, strict=True)])
        assert recall >= 0.9
        # whatever comes back carries its true similarity
        lookup = dict(zip(ids.tolist(), vectors, strict=True))
        true = np.stack([[lookup[i] @ q for i in row] for row, q in zip(got_ids, queries, strict=True)])
        np.testing.assert_allclose(got_sims, true, atol=1e-5)


def test_add_then_search_equals_the_oracle(backend: Backend, data) -> None:
    ids, vectors = data
    index = backend.filled(ids, vectors)
    assert index.count == len(ids)
    assert_search_matches(index, backend, ids, vectors, unit_vectors(20, DIM, seed=12), 10)
    # a stored vector finds itself first
    top, sims = index.search(vectors[:5], 1)
    np.testing.assert_array_equal(top[:, 0], ids[:5])
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def test_add_is_an_upsert(backend: Backend, data) -> None:
    ids, vectors = data
    index = backend.filled(ids, vectors)
    moved = unit_vectors(3, DIM, seed=13)
    index.add(ids[:3], moved)
    assert index.count == len(ids)
    np.testing.assert_allclose(index.vectors_of(ids[:3]), moved, atol=1e-6)
    top, _ = index.search(moved, 1)
    np.testing.assert_array_equal(top[:, 0], ids[:3])
    # the old vectors no longer lead to these ids
    top, sims = index.search(vectors[:3], 1)
    assert (sims[:, 0] < 0.999).all()


def test_remove_and_purge(backend: Backend, data) -> None:
    ids, vectors = data
    index = backend.filled(ids, vectors)
    removed, purged = ids[:40:2], ids[1:40:2]
    assert index.remove(np.concatenate([removed, [10**6]])) == len(removed)  # unknown ids are ignored
    assert index.remove(removed) == 0
    assert index.purge(purged) == len(purged)
    assert index.purge(purged) == 0
    gone = np.concatenate([removed, purged])
    assert index.count == len(ids) - len(gone)
    assert not any(index.contains(i) for i in gone.tolist())
    keep = ~np.isin(ids, gone)
    np.testing.assert_array_equal(index.ids(), np.sort(ids[keep]))
    found, _ = index.search(vectors[:40], 5)
    assert not np.isin(found, gone).any()
    with pytest.raises(KeyError):
        index.vectors_of(purged[:1])
    assert_search_matches(index, backend, ids[keep], vectors[keep], unit_vectors(10, DIM, seed=14), 5)


def test_padding_when_k_exceeds_the_count(backend: Backend, data) -> None:
    ids, vectors = data
    empty = backend.new("model-a", DIM)
    got_ids, got_sims = empty.search(vectors[:2], 4)
    assert (got_ids == PAD_ID).all() and np.isneginf(got_sims).all()
    small = backend.filled(ids[:3], vectors[:3])
    got_ids, got_sims = small.search(vectors[:2], 5)
    assert (got_ids[:, 3:] == PAD_ID).all() and np.isneginf(got_sims[:, 3:]).all()
    assert sorted(got_ids[0, :3].tolist()) == sorted(ids[:3].tolist())
    assert got_ids[0, 0] == ids[0] and got_ids[1, 0] == ids[1]


def test_ids_contains_vectors_of(backend: Backend, data) -> None:
    ids, vectors = data
    index = backend.filled(ids[::-1].copy(), vectors[::-1].copy())
    np.testing.assert_array_equal(index.ids(), ids)  # sorted ascending, whatever the insert order
    assert index.contains(int(ids[5])) and not index.contains(int(ids[5]) + 1)
    pick = ids[[7, 2, 250]]
    np.testing.assert_allclose(index.vectors_of(pick), vectors[[7, 2, 250]], atol=1e-6)
    with pytest.raises(KeyError):
        index.vectors_of(np.array([ids[0], 1], dtype=np.int64))


def test_input_is_checked(backend: Backend, data) -> None:
    ids, vectors = data
    index = backend.new("model-a", DIM)
    with pytest.raises(ValueError, match="shape"):
        index.add(ids[:2], unit_vectors(2, DIM + 1))
    with pytest.raises(ValueError, match="normalised"):
        index.add(ids[:2], vectors[:2] * 2)
    with pytest.raises(ValueError, match=">= 0"):
        index.add(np.array([-1, 2]), vectors[:2])
    with pytest.raises(ValueError, match="k must be"):
        index.search(vectors[:1], 0)
    assert index.count == 0


def test_snapshot_round_trip(backend: Backend, data, tmp_path: Path) -> None:
    ids, vectors = data
    index = backend.filled(ids, vectors)
    index.remove(ids[:10])
    index.watermark = 42
    path = tmp_path / "model-a.cfidx"
    index.save(path)
    loaded = backend.load(path, "model-a", DIM)
    assert loaded.kind == index.kind and loaded.watermark == 42 and loaded.count == len(ids) - 10
    np.testing.assert_array_equal(loaded.ids(), ids[10:])
    queries = unit_vectors(8, DIM, seed=15)
    np.testing.assert_array_equal(loaded.search(queries, 5)[0], index.search(queries, 5)[0])
    np.testing.assert_allclose(loaded.vectors_of(ids[10:15]), vectors[10:15], atol=1e-6)


def test_snapshot_of_another_model_or_dim_is_refused(backend: Backend, data, tmp_path: Path) -> None:
    ids, vectors = data
    path = tmp_path / "model-a.cfidx"
    backend.filled(ids[:20], vectors[:20]).save(path)
    with pytest.raises(SnapshotMismatch, match="model"):
        backend.load(path, "model-b", DIM)
    with pytest.raises(SnapshotMismatch, match="dim"):
        backend.load(path, "model-a", DIM * 2)
    with pytest.raises(FileNotFoundError):
        backend.load(tmp_path / "absent.cfidx", "model-a", DIM)


def test_concurrent_searches_and_writes(backend: Backend, data) -> None:
    ids, vectors = data
    index = backend.filled(ids[:150], vectors[:150])
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                found, sims = index.search(vectors[:4], 3)
                assert found.shape == (4, 3) and (found[:, 0] >= 0).all()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for a in range(150, 300, 30):
            index.add(ids[a : a + 30], vectors[a : a + 30])
            index.remove(ids[a : a + 5])
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[0]
    expected = np.concatenate([ids[:150], *[ids[a + 5 : a + 30] for a in range(150, 300, 30)]])
    np.testing.assert_array_equal(index.ids(), np.sort(expected))
    assert index.count == len(expected)
