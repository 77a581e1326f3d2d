"""Snapshots: round trip per backend, atomic replacement, and refusal of damaged or foreign files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from childface.config import Settings
from childface.index import (
    FaissIndex,
    SnapshotCorrupt,
    SnapshotMismatch,
    TorchExactIndex,
    VectorIndex,
    create_index,
    load_index,
    snapshot_path,
)
from childface.index.base import SNAPSHOT_MAGIC

from .conftest import unit_vectors

DIM = 32


def build(backend: str, gallery, model_id: str = "dlib-resnet:abc") -> VectorIndex:
    ids, vectors = gallery
    if backend == "torch":
        index: VectorIndex = TorchExactIndex(model_id, DIM)
    else:
        above = 500 if backend == "hnsw" else 10**9
        index = FaissIndex(model_id, DIM, approximate_above=above, hnsw_m=16)
    index.add(ids[:800], vectors[:800])
    if isinstance(index, FaissIndex):
        index.rebuild_if_needed()  # what the gallery's background thread does past the threshold
    index.remove(ids[:10])  # dead HNSW nodes must survive the round trip as dead
    index.watermark = 4242
    return index


def load_as(backend: str, path: Path, **kwargs) -> VectorIndex:
    cls = TorchExactIndex if backend == "torch" else FaissIndex
    return cls.load(path, **kwargs)


@pytest.mark.parametrize("backend", ["flat", "hnsw", "torch"])
def test_round_trip_keeps_ids_vectors_watermark_and_results(backend, gallery, tmp_path):
    ids, vectors = gallery
    index = build(backend, gallery)
    path = tmp_path / "snap.cfidx"
    index.save(path)
    loaded = load_as(backend, path, model_id="dlib-resnet:abc", dim=DIM)
    assert loaded.model_id == "dlib-resnet:abc" and loaded.dim == DIM and loaded.watermark == 4242
    assert loaded.count == 790
    np.testing.assert_array_equal(loaded.ids(), index.ids())
    np.testing.assert_array_equal(loaded.vectors_of(ids[10:800]), vectors[10:800])
    if backend != "torch":
        assert loaded.backend == index.backend == ("hnsw" if backend == "hnsw" else "flat")
    want = index.search(vectors[:40], 5)
    got = loaded.search(vectors[:40], 5)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_allclose(got[1], want[1])
    assert not np.isin(got[0], ids[:10]).any()


def test_save_is_atomic_and_leaves_no_temp_file(gallery, tmp_path, monkeypatch):
    index = build("flat", gallery)
    path = tmp_path / "snap.cfidx"
    index.save(path)
    index.save(path)  # replacing an existing snapshot
    assert [p.name for p in tmp_path.iterdir()] == ["snap.cfidx"]

    index.add(gallery[0][900:950], gallery[1][900:950])

    def crash(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk went away"):
        index.save(path)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["snap.cfidx"], "temp file cleaned up"
    assert FaissIndex.load(path).count == 790, "the old snapshot is intact"


@pytest.mark.parametrize("backend", ["flat", "hnsw", "torch"])
def test_truncated_or_bit_flipped_snapshot_is_corrupt(backend, gallery, tmp_path):
    path = tmp_path / "snap.cfidx"
    build(backend, gallery).save(path)
    good = path.read_bytes()

    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(SnapshotCorrupt, match="payload"):
        load_as(backend, path)

    flipped = bytearray(good)
    flipped[len(good) - 100] ^= 0x01  # one bit deep in the payload
    path.write_bytes(bytes(flipped))
    with pytest.raises(SnapshotCorrupt, match="checksum"):
        load_as(backend, path)

    path.write_bytes(good + b"\x00")
    with pytest.raises(SnapshotCorrupt):
        load_as(backend, path)

    path.write_bytes(SNAPSHOT_MAGIC + b"\xff\xff")
    with pytest.raises(SnapshotCorrupt, match="truncated header"):
        load_as(backend, path)

    path.write_bytes(b"not a snapshot at all")
    with pytest.raises(SnapshotCorrupt, match="magic"):
        load_as(backend, path)


def test_snapshot_of_another_model_dim_or_backend_is_a_mismatch(gallery, tmp_path):
    path = tmp_path / "snap.cfidx"
    build("hnsw", gallery, model_id="dlib-resnet:abc").save(path)
    with pytest.raises(SnapshotMismatch, match="model"):
        FaissIndex.load(path, model_id="arcface-r50:def")
    with pytest.raises(SnapshotMismatch, match="dim"):
        FaissIndex.load(path, model_id="dlib-resnet:abc", dim=512)
    with pytest.raises(SnapshotMismatch, match="faiss"):
        TorchExactIndex.load(path)
    with pytest.raises(FileNotFoundError):
        FaissIndex.load(tmp_path / "missing.cfidx")


def test_factory_creates_and_loads_on_cpu(gallery, tmp_path):
    settings = Settings(
        device="cpu", index_dir=tmp_path / "idx", index_approximate_above=500, index_hnsw_ef_search=40
    )
    index = create_index(settings, "dlib-resnet:abc", DIM)
    assert isinstance(index, FaissIndex) and index.approximate_above == 500
    index.add(*gallery)
    assert index.backend == "flat" and index.rebuild_if_needed()
    index.watermark = 7
    path = snapshot_path(settings, "dlib-resnet:abc")
    assert path.parent == tmp_path / "idx" and ":" not in path.name
    index.save(path)
    loaded = load_index(settings, path, "dlib-resnet:abc", DIM)
    assert isinstance(loaded, FaissIndex)
    assert loaded.backend == "hnsw" and loaded.hnsw_ef_search == 40 and loaded.watermark == 7
    with pytest.raises(SnapshotMismatch):
        load_index(settings, path, "arcface-r50:def", DIM)


def test_loading_an_exact_snapshot_holds_the_payload_once(tmp_path):
    """Sections stream from the file into their arrays: no whole-payload buffer beside them."""
    import tracemalloc

    n = 50_000
    vectors = unit_vectors(n, 128, seed=11)
    index = FaissIndex("m", 128, approximate_above=10**9)
    index.add(np.arange(n), vectors)
    path = tmp_path / "big.cfidx"
    index.save(path)
    del index
    payload = n * 128 * 4 + n * 8
    tracemalloc.start()
    try:
        loaded = FaissIndex.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loaded.count == n
    np.testing.assert_array_equal(loaded.vectors_of(np.asarray([0, n - 1])), vectors[[0, n - 1]])
    # the arrays themselves, an 8 MB hashing buffer and the id table; a second copy would be 2x
    assert peak < 1.5 * payload, (peak, payload)
