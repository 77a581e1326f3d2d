"""Vector index: the interface, its FAISS and torch backends, and the factory that picks one.

`create_index` chooses by `Settings.device`: on the CPU a `FaissIndex` (exact
flat search, HNSW above `index_approximate_above`); on CUDA a `FaissIndex`
searching a GPU copy when faiss-gpu sees a GPU, else a `TorchExactIndex`
(matmul + top-k on the GPU). `load_index` opens that backend's snapshot.
"""

from __future__ import annotations

import re
from pathlib import Path

import faiss

from childface.config import Settings
from childface.index.base import (
    PAD_ID,
    PAD_SIMILARITY,
    SnapshotCorrupt,
    SnapshotError,
    SnapshotMismatch,
    VectorIndex,
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
    "snapshot_path",
]


def _backend(settings: Settings) -> tuple[type[VectorIndex], dict[str, object]]:
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
