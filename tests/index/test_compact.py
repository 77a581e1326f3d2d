"""The array-based structures behind the FAISS index, against plain Python/numpy oracles."""

from __future__ import annotations

import numpy as np
import pytest

from childface.index import FaissIndex
from childface.index.slots import ABSENT, SlotTable

from .conftest import brute_force, unit_vectors

DIM = 16


def test_slot_table_matches_a_dict_including_far_ids() -> None:
    rng = np.random.default_rng(0)
    table, oracle = SlotTable(), {}
    for step in range(200):
        ids = np.unique(rng.integers(0, 5000, rng.integers(1, 40)))
        if step % 50 == 7:
            ids = np.asarray([10**12 + step, 3 * 10**9])  # far ids: the sparse side, no huge array
        if rng.random() < 0.6:
            slots = rng.integers(0, 10**6, len(ids))
            table.set(ids, slots)
            oracle.update(zip(ids.tolist(), slots.tolist(), strict=True))
        else:
            table.clear(ids)
            for i in ids.tolist():
                oracle.pop(i, None)
        assert table.count == len(oracle)
    probe = np.asarray(sorted(oracle) + [1, 2, 4999, 10**12 + 1, 10**13])
    assert table.get(probe).tolist() == [oracle.get(i, ABSENT) for i in probe.tolist()]
    assert table.keys().tolist() == sorted(oracle)
    assert table.max_value() == max(oracle.values())
    assert table.nbytes < 64 * 1024 * 1024  # the far ids did not size the dense array


@pytest.mark.parametrize("store", ["flat", "hnsw"])
def test_faiss_index_follows_an_oracle_through_random_operations(store: str) -> None:
    """add (insert and replace), remove, purge and a store switch, checked after every step."""
    rng = np.random.default_rng(1)
    index = FaissIndex("m", DIM, approximate_above=150 if store == "hnsw" else 10**9, hnsw_ef_search=200)
    oracle: dict[int, np.ndarray] = {}
    for step in range(60):
        ids = np.unique(rng.integers(0, 400, rng.integers(1, 30)))
        op = rng.choice(["add", "add", "remove", "purge"])
        if op == "add":
            vectors = unit_vectors(len(ids), DIM, seed=step + 100)
            index.add(ids, vectors)
            oracle.update(zip(ids.tolist(), vectors, strict=True))
        else:
            present = sum(i in oracle for i in ids.tolist())
            got = index.remove(ids) if op == "remove" else index.purge(ids)
            assert got == present
            for i in ids.tolist():
                oracle.pop(i, None)
        if step % 10 == 9:
            index.rebuild_if_needed()  # what the background thread does: switch or compact
        assert index.count == len(oracle)
        assert index.ids().tolist() == sorted(oracle)
        if oracle:
            keys = np.asarray(sorted(oracle))
            np.testing.assert_array_equal(index.vectors_of(keys), np.stack([oracle[i] for i in keys]))
    if store == "hnsw":
        assert index.backend == "hnsw"
    keys = np.asarray(sorted(oracle))
    gallery = np.stack([oracle[i] for i in keys])
    queries = unit_vectors(20, DIM, seed=5)
    found, sims = index.search(queries, 5)
    want, want_sims = brute_force(keys, gallery, queries, 5)
    if store == "flat":
        np.testing.assert_array_equal(found, want)
        np.testing.assert_allclose(sims, want_sims, atol=1e-5)
    else:
        assert np.mean(found[:, 0] == want[:, 0]) >= 0.95


def test_exact_search_of_a_batch_equals_single_queries() -> None:
    """Small batches take the per-query einsum path, large ones one matrix product: same answers."""
    ids = np.arange(500, dtype=np.int64) * 2 + 1
    vectors = unit_vectors(500, DIM, seed=2)
    index = FaissIndex("m", DIM, approximate_above=10**9)
    index.add(ids, vectors)
    queries = unit_vectors(40, DIM, seed=3)
    batch_ids, batch_sims = index.search(queries, 7)
    for q, row_ids, row_sims in zip(queries, batch_ids, batch_sims, strict=True):
        one_ids, one_sims = index.search(q[None], 7)
        np.testing.assert_array_equal(one_ids[0], row_ids)
        np.testing.assert_allclose(one_sims[0], row_sims, atol=1e-6)
    want, _ = brute_force(ids, vectors, queries, 7)
    np.testing.assert_array_equal(batch_ids, want)


def test_bulk_load_takes_the_array_over_and_never_builds_hnsw() -> None:
    vectors = unit_vectors(300, DIM, seed=4)
    index = FaissIndex("m", DIM, approximate_above=100)
    index.bulk_load(np.arange(300), vectors)
    assert index.backend == "flat" and index.count == 300 and index.needs_rebuild()
    assert np.shares_memory(index._store.vectors, vectors)  # noqa: SLF001 - no copy of a million rows
    assert index.rebuild_if_needed() and index.backend == "hnsw"
    assert index.search(vectors[:3], 1)[0][:, 0].tolist() == [0, 1, 2]
