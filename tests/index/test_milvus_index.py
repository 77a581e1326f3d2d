"""What only the Milvus backend has: selection by settings, the shared collection, snapshots without
vectors, purge reaching the files on disk. The common contract is in test_index_contract.py."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from childface.config import Settings
from childface.index import (
    SnapshotCorrupt,
    SnapshotMismatch,
    create_index,
    load_index,
    purge_snapshot,
    snapshot_path,
)
from childface.index.milvus_index import MilvusIndex, collection_name, milvus_client, normalise_uri

from .conftest import unit_vectors

DIM = 16
MODEL = "dlib-resnet:0a1b2c3d"


def files_holding(folder: str, blob: bytes) -> list[str]:
    hits = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                if blob in fh.read():
                    hits.append(path)
    return hits


def test_collection_names_are_safe_and_distinct() -> None:
    assert collection_name("childface_", MODEL) == "childface_dlib_resnet_0a1b2c3d"
    long_a, long_b = "m" * 300 + "a", "m" * 300 + "b"
    assert len(collection_name("p_", long_a)) <= 255
    assert collection_name("p_", long_a) != collection_name("p_", long_b)
    assert normalise_uri("http://user:secret@milvus:19530") == "http://milvus:19530"
    assert normalise_uri("rel/milvus.db") == str(Path("rel/milvus.db").resolve())


def test_settings_select_milvus_and_snapshots_hold_no_vectors(
    milvus_uri: str, milvus_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None,
        index_dir=tmp_path,
        index_backend="milvus",
        milvus_uri=milvus_uri,
        milvus_collection_prefix=milvus_prefix,
    )
    index = create_index(settings, MODEL, DIM)
    assert isinstance(index, MilvusIndex) and index.collection == milvus_prefix + "dlib_resnet_0a1b2c3d"
    vectors = unit_vectors(200, DIM, seed=21)
    index.add(np.arange(200), vectors)
    index.watermark = 7
    path = snapshot_path(settings, MODEL)
    index.save(path)
    raw = path.read_bytes()
    assert len(raw) < 200 * 8 + 2048, "the snapshot holds ids and a header only"
    assert vectors[3].tobytes() not in raw
    loaded = load_index(settings, path, MODEL, DIM)
    assert isinstance(loaded, MilvusIndex) and loaded.count == 200 and loaded.watermark == 7
    np.testing.assert_array_equal(loaded.search(vectors[:3], 1)[0][:, 0], [0, 1, 2])
    # the FAISS backend refuses the file: the gallery rebuilds instead of mixing backends
    with pytest.raises(SnapshotMismatch, match="milvus"):
        load_index(Settings(_env_file=None, index_dir=tmp_path, device="cpu"), path, MODEL, DIM)


def test_a_new_index_adopts_the_collection_and_its_watermark_drops_what_was_not_rewritten(
    milvus_uri: str, milvus_prefix: str
) -> None:
    """A replica starting without a snapshot: rebuilding must not wipe what the others serve, and the
    result must equal the DB once the rebuild is done (its watermark set)."""
    vectors = unit_vectors(20, DIM, seed=22)
    first = MilvusIndex(MODEL, DIM, uri=milvus_uri, collection_prefix=milvus_prefix)
    first.add(np.arange(20), vectors)
    second = MilvusIndex(MODEL, DIM, uri=milvus_uri, collection_prefix=milvus_prefix)
    assert second.count == 20  # attached, nothing deleted yet
    assert first.search(vectors[15:16], 1)[0][0, 0] == 15
    second.add(np.arange(10), vectors[:10])  # the DB now holds only faces 0..9
    second.remove(np.array([12]))
    second.watermark = 3
    assert second.count == 10
    np.testing.assert_array_equal(second.ids(), np.arange(10))
    third = MilvusIndex(MODEL, DIM, uri=milvus_uri, collection_prefix=milvus_prefix)
    np.testing.assert_array_equal(third.ids(), np.arange(10))


def test_load_refuses_a_collection_that_changed_or_went(
    milvus_uri: str, milvus_prefix: str, tmp_path: Path
) -> None:
    vectors = unit_vectors(12, DIM, seed=23)
    index = MilvusIndex(MODEL, DIM, uri=milvus_uri, collection_prefix=milvus_prefix)
    index.add(np.arange(10), vectors[:10])
    path = tmp_path / "snap.cfidx"
    index.save(path)
    options = {"uri": milvus_uri, "collection_prefix": milvus_prefix}
    assert MilvusIndex.load(path, model_id=MODEL, dim=DIM, **options).count == 10
    with pytest.raises(SnapshotMismatch, match="collection"):
        MilvusIndex.load(path, model_id=MODEL, dim=DIM, uri=milvus_uri, collection_prefix="other_")
    with pytest.raises(SnapshotMismatch, match="Milvus at"):
        MilvusIndex.load(path, model_id=MODEL, dim=DIM, uri=milvus_uri + "x", collection_prefix=milvus_prefix)
    index.add(np.array([10]), vectors[10:11])  # written after the snapshot, by this or another process
    with pytest.raises(SnapshotCorrupt, match="11 rows"):
        MilvusIndex.load(path, model_id=MODEL, dim=DIM, **options)
    milvus_client(milvus_uri).drop_collection(index.collection)
    with pytest.raises(SnapshotCorrupt, match="does not exist"):
        MilvusIndex.load(path, model_id=MODEL, dim=DIM, **options)


def test_purge_leaves_no_copy_in_milvus_lite_files(milvus_uri: str, milvus_prefix: str) -> None:
    vectors = unit_vectors(30, DIM, seed=24)
    index = MilvusIndex(MODEL, DIM, uri=milvus_uri, collection_prefix=milvus_prefix)
    index.add(np.arange(30), vectors)
    client = milvus_client(milvus_uri)
    client.flush(index.collection)
    folder = os.path.join(milvus_uri, "collections", index.collection)
    assert files_holding(folder, vectors[4].tobytes()), "control: the vector is on disk before"
    index.remove(np.array([5]))  # removed earlier (archived): purge must reach it too
    assert index.purge(np.array([4, 5])) == 1
    assert not files_holding(milvus_uri, vectors[4].tobytes())
    assert not files_holding(milvus_uri, vectors[5].tobytes())
    assert files_holding(folder, vectors[6].tobytes()), "the other rows stay"
    assert index.count == 28
    assert index.search(vectors[6:7], 1)[0][0, 0] == 6
    np.testing.assert_allclose(index.vectors_of(np.array([29])), vectors[29:30], atol=1e-6)


def test_purge_snapshot_deletes_from_another_models_collection(
    milvus_uri: str, milvus_prefix: str, tmp_path: Path
) -> None:
    """Erasure reaches the collection of a model this process does not serve, through its snapshot."""
    vectors = unit_vectors(8, DIM, seed=25)
    other = MilvusIndex("other-model", DIM, uri=milvus_uri, collection_prefix=milvus_prefix)
    other.add(np.arange(8), vectors)
    path = tmp_path / "other-model.cfidx"
    other.save(path)
    assert purge_snapshot(path, np.array([2, 3, 100]))
    assert not purge_snapshot(path, np.array([2, 3]))  # nothing left to purge
    reloaded = MilvusIndex.load(
        path, model_id="other-model", dim=DIM, uri=milvus_uri, collection_prefix=milvus_prefix
    )
    assert reloaded.count == 6 and not reloaded.contains(2)
    assert not milvus_client(milvus_uri).get(reloaded.collection, ids=[2, 3])


def test_server_uri_and_doctor(milvus_uri: str, milvus_prefix: str) -> None:
    """The server path (http://, as for Milvus standalone or a cluster) against Milvus Lite's own gRPC
    server: purge compacts instead of rewriting, and `childface doctor` lists the collections."""
    from milvus_lite.server_manager import server_manager_instance

    from childface.cli import _doctor_index

    url = server_manager_instance.start_and_get_uri(milvus_uri)
    assert url.startswith("http://127.0.0.1:")
    vectors = unit_vectors(10, DIM, seed=26)
    index = MilvusIndex(MODEL, DIM, uri=url, collection_prefix=milvus_prefix)
    assert not index.is_lite
    index.add(np.arange(10), vectors)
    assert index.purge(np.array([1, 2])) == 2
    assert index.count == 8 and not milvus_client(url).get(index.collection, ids=[1, 2])
    np.testing.assert_array_equal(index.search(vectors[3:4], 1)[0], [[3]])
    problems: list[str] = []
    settings = Settings(
        _env_file=None, index_backend="milvus", milvus_uri=url, milvus_collection_prefix=milvus_prefix
    )
    report = _doctor_index(settings, problems)
    assert not problems and report["backend"] == "milvus" and report["collections"] == [index.collection]
    assert _doctor_index(Settings(_env_file=None, index_backend="faiss"), problems)["backend"] == "faiss"


def test_hnsw_collection(milvus_uri: str, milvus_prefix: str, tmp_path: Path) -> None:
    settings = Settings(
        _env_file=None,
        index_dir=tmp_path,
        index_backend="milvus",
        milvus_uri=milvus_uri,
        milvus_collection_prefix=milvus_prefix,
        milvus_index_type="HNSW",
        index_hnsw_m=8,
    )
    index = create_index(settings, MODEL, DIM)
    vectors = unit_vectors(300, DIM, seed=27)
    index.add(np.arange(300), vectors)
    described = milvus_client(milvus_uri).describe_index(index.collection, "vector")
    assert described["index_type"] == "HNSW"  # Milvus Lite does not report M back
    found, sims = index.search(vectors[:20], 1)
    np.testing.assert_array_equal(found[:, 0], np.arange(20))
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)
