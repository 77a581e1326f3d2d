"""Vector index: the interface, its FAISS and torch backends, and the factory that picks one.

`create_index` chooses by `Settings.device`: on the CPU a `FaissIndex` (exact
flat search, HNSW above `index_approximate_above`); on CUDA a `FaissIndex`
searching a GPU copy when faiss-gpu sees a GPU, else a `TorchExactIndex`
(matmul + top-k on the GPU). `index_backend = "milvus"` puts the vectors in a
Milvus collection instead (`MilvusIndex`: Milvus Lite or a server, by URI).
`load_index` opens that backend's snapshot.
"""

from __future__ import annotations

import re
from pathlib import Path

import faiss
import numpy as np

from childface.config import Settings
from childface.index.base import (
    PAD_ID,
    PAD_SIMILARITY,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotMismatch,
    VectorIndex,
    read_snapshot,
)
from childface.index.faiss_index import FaissIndex
from childface.index.torch_index import TorchExactIndex

__all__ = [
    "PAD_ID",
    "PAD_SIMILARITY",
    "FaissIndex",
    "SnapshotCorrupt",
    "SnapshotError",
    "SnapshotMismatch",
    "TorchExactIndex",
    "VectorIndex",
    "create_index",
    "load_index",
    "purge_snapshot",
    "snapshot_path",
]


def _backend(settings: Settings) -> tuple[type[VectorIndex], dict[str, object]]:
    if settings.index_backend == "milvus":
        return _milvus_class(), {
            "uri": settings.milvus_uri,
            "token": settings.milvus_token.get_secret_value() if settings.milvus_token else None,
            "collection_prefix": settings.milvus_collection_prefix,
            "index_type": settings.milvus_index_type,
            "hnsw_m": settings.index_hnsw_m,
            "hnsw_ef_construction": settings.index_hnsw_ef_construction,
            "hnsw_ef_search": settings.index_hnsw_ef_search,
        }
    device = settings.resolved_device
    if device.startswith("cuda"):
        ordinal = int(device.partition(":")[2] or 0)
        if faiss.get_num_gpus() <= ordinal:
            return TorchExactIndex, {"device": device}
        gpu_device: int | None = ordinal
    else:
        gpu_device = None
    return FaissIndex, {
        "approximate_above": settings.index_approximate_above,
        "hnsw_m": settings.index_hnsw_m,
        "hnsw_ef_construction": settings.index_hnsw_ef_construction,
        "hnsw_ef_search": settings.index_hnsw_ef_search,
        "compact_fraction": settings.index_compact_fraction,
        "gpu_device": gpu_device,
    }


def _milvus_class() -> type[VectorIndex]:
    # imported on demand: pymilvus is an optional extra and slow to import
    from childface.index.milvus_index import MilvusIndex

    return MilvusIndex


def create_index(settings: Settings, model_id: str, dim: int) -> VectorIndex:
    """An empty index for one embedding model, on the backend the settings call for."""
    cls, options = _backend(settings)
    return cls(model_id, dim, **options)


def load_index(settings: Settings, path: Path, model_id: str, dim: int) -> VectorIndex:
    """Open a snapshot for this model on the configured backend.

    Raises FileNotFoundError, `SnapshotCorrupt` or `SnapshotMismatch` (another
    model, dim or backend): in each case the caller rebuilds from the DB.
    """
    cls, options = _backend(settings)
    return cls.load(path, model_id=model_id, dim=dim, **options)


def snapshot_path(settings: Settings, model_id: str) -> Path:
    """Where this model's snapshot lives: `<index_dir>/<model id, filesystem-safe>.cfidx`."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model_id)
    return settings.resolved_index_dir / f"{safe}.cfidx"


def purge_snapshot(path: Path, ids: np.ndarray) -> bool:
    """Rewrite a snapshot of any model and backend without these faces (erasure); True if it changed.

    A file that cannot be read is deleted: it is derived data, and it may hold the vectors.
    """
    kinds: dict[str, type[VectorIndex]] = {FaissIndex.kind: FaissIndex, TorchExactIndex.kind: TorchExactIndex}
    try:
        header = read_snapshot(path)
        if header["kind"] == "milvus":  # its vectors are in Milvus: the purge deletes them there
            kinds["milvus"] = _milvus_class()
        cls = kinds.get(header["kind"])
        if cls is None:
            raise SnapshotMismatch(f"unknown index kind {header['kind']!r}")
        index = cls.load(path)
    except FileNotFoundError:
        return False
    except SnapshotError:
        path.unlink(missing_ok=True)
        return True
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    # not only the faces present: a dead HNSW node (an archived or replaced face) still holds a vector
    if isinstance(index, FaissIndex):
        if not index.holds(ids):
            return False
    elif not any(index.contains(i) for i in ids.tolist()):
        return False
    index.purge(ids)
    index.save(path)
    return True
