"""`purge` (erasure): the vectors leave the index's memory and its next snapshot, on every backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from childface.index import FaissIndex, TorchExactIndex, VectorIndex, purge_snapshot
from childface.index.faiss_index import _rows

from .conftest import unit_vectors

IDS = np.arange(40, dtype=np.int64) + 100
VECTORS = unit_vectors(40, 16, seed=7)
GONE = [100, 117, 139]  # first, middle and last row


def _make(kind: str) -> VectorIndex:
    if kind == "torch":
        index: VectorIndex = TorchExactIndex("m", 16)
    else:
        index = FaissIndex("m", 16, approximate_above=10 if kind == "hnsw" else 1000)
    index.add(IDS, VECTORS)
    if isinstance(index, FaissIndex):
        index.rebuild_if_needed()
        assert index.backend == ("hnsw" if kind == "hnsw" else "flat")
    return index


def _held(index: VectorIndex) -> np.ndarray:
    """Every vector row the index keeps in memory, live or not."""
    if isinstance(index, TorchExactIndex):
        return index._gallery.numpy()  # noqa: SLF001
    store = index._store  # noqa: SLF001
    return _rows(store.index.storage) if store.kind == "hnsw" else store.vectors  # whole buffer


@pytest.mark.parametrize("kind", ["flat", "hnsw", "torch"])
def test_purged_vectors_leave_memory_and_snapshot(kind: str, tmp_path: Path) -> None:
    index = _make(kind)
    assert index.purge(np.asarray(GONE)) == 3
    assert index.count == 37 and not any(index.contains(i) for i in GONE)
    held = _held(index)
    for i in GONE:
        assert not np.isclose(held, VECTORS[i - 100], atol=1e-7).all(axis=1).any()
    path = tmp_path / "s.cfidx"
    index.save(path)
    raw = path.read_bytes()
    assert not any(VECTORS[i - 100].tobytes() in raw for i in GONE)
    assert VECTORS[5].tobytes() in raw
    # the rest still searches right
    ids, _ = index.search(VECTORS[[5, 20]], 1)
    assert ids[:, 0].tolist() == [105, 120]


def test_a_purge_during_a_store_switch_reaches_the_new_store() -> None:
    index = FaissIndex("m", 16, approximate_above=10)
    index.add(IDS[:5], VECTORS[:5])
    index.add(IDS[5:], VECTORS[5:])  # an exact store past the threshold: the switch to HNSW is due
    new_store = index._new_store  # noqa: SLF001

    def purge_while_building(kind: str):  # noqa: ANN202
        # the live vectors are exported and the new store is being built: a purge arrives now
        assert index.purge(np.asarray(GONE)) == 3
        return new_store(kind)

    index._new_store = purge_while_building  # noqa: SLF001
    assert index.rebuild_if_needed() and index.backend == "hnsw"
    held = _held(index)
    for i in GONE:
        assert not index.contains(i)
        assert not np.isclose(held, VECTORS[i - 100], atol=1e-7).all(axis=1).any()


def test_purge_snapshot_rewrites_any_models_file_and_drops_an_unreadable_one(tmp_path: Path) -> None:
    stale = tmp_path / "earlier.cfidx"
    _make("hnsw").save(stale)
    assert purge_snapshot(stale, np.asarray(GONE + [999]))
    assert not any(VECTORS[i - 100].tobytes() in stale.read_bytes() for i in GONE)
    assert FaissIndex.load(stale).count == 37
    assert not purge_snapshot(stale, np.asarray([999]))  # nothing of these faces: left as it is
    broken = tmp_path / "broken.cfidx"
    broken.write_bytes(stale.read_bytes()[:-10])
    assert purge_snapshot(broken, np.asarray(GONE)) and not broken.exists()


def test_purge_reaches_vectors_the_hnsw_graph_kept_after_an_earlier_removal(tmp_path: Path) -> None:
    index = _make("hnsw")
    index.remove(np.asarray(GONE[:2]))  # e.g. the child was archived: the nodes died, the vectors stayed
    replacement = unit_vectors(1, 16, seed=99)
    index.add(np.asarray(GONE[2:]), replacement)  # a replaced vector: the old node died too
    index.purge(np.asarray(GONE))
    held = _held(index)
    for vector in [*(VECTORS[i - 100] for i in GONE), replacement[0]]:
        assert not np.isclose(held, vector, atol=1e-7).all(axis=1).any()
    path = tmp_path / "s.cfidx"
    index.save(path)
    reloaded = FaissIndex.load(path)  # dead nodes still known after a reload: a later purge finds them
    assert reloaded.count == 37 and reloaded.dead == index.dead


@pytest.mark.parametrize("kind", ["flat", "hnsw", "torch"])
def test_purge_reaches_a_vector_removed_earlier(kind: str) -> None:
    # archived (removed) first, erased later: the freed rows must not keep the vectors for the purge
    index = _make(kind)
    assert index.remove(np.asarray(GONE)) == 3
    index.purge(np.asarray(GONE))
    held = _held(index)
    for i in GONE:
        assert not np.isclose(held, VECTORS[i - 100], atol=1e-7).all(axis=1).any()
    ids, _ = index.search(VECTORS[[5, 20]], 1)
    assert ids[:, 0].tolist() == [105, 120]


def test_purge_snapshot_erases_dead_hnsw_nodes_of_faces_removed_before_the_save(tmp_path: Path) -> None:
    index = _make("hnsw")
    index.remove(np.asarray(GONE))  # archived in this model's index, then saved: the nodes are dead
    path = tmp_path / "other-model.cfidx"
    index.save(path)
    assert VECTORS[GONE[0] - 100].tobytes() in path.read_bytes()
    assert purge_snapshot(path, np.asarray(GONE)), "the dead nodes held the vectors: the file changed"
    raw = path.read_bytes()
    assert not any(VECTORS[i - 100].tobytes() in raw for i in GONE)
    assert FaissIndex.load(path).count == 37
    assert not purge_snapshot(path, np.asarray(GONE)), "already purged: nothing left to change"
