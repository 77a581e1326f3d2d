"""Exact search as one matrix product + top-k in torch: the GPU path without faiss-gpu.

The gallery is a (capacity, dim) float32 tensor on `device` that grows by
doubling; row r holds face `row_ids[r]`. Removal moves the last row into the
hole, so the live rows are always 0..count-1 and a search is `queries @
gallery[:count].T` followed by `topk`. Exact by construction (the same figures
as `IndexFlatIP` up to float rounding), so no recall trade-off; on a GPU a
million 128-d faces is a few milliseconds per batch. Runs on the CPU as well,
which is how the tests check it against FAISS.

Thread-safety: the base class's readers-writer lock; searches only read.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import torch

from childface.index.base import (
    PAD_ID,
    PAD_SIMILARITY,
    SnapshotSection,
    VectorIndex,
    check_ids,
    check_k,
    check_vectors,
)

#: bound on the (queries x gallery) similarity block held at once, in float32 elements
_MAX_BLOCK = 64 * 1024 * 1024


class TorchExactIndex(VectorIndex):
    kind = "torch-exact"

    def __init__(self, model_id: str, dim: int, *, device: str | torch.device = "cpu") -> None:
        super().__init__(model_id, dim)
        self.device = torch.device(device)
        self._gallery = torch.empty((0, dim), dtype=torch.float32, device=self.device)
        self._row_ids = np.empty(0, dtype=np.int64)
        self._row_of: dict[int, int] = {}

    @property
    def count(self) -> int:
        return len(self._row_of)

    def ids(self) -> np.ndarray:
        with self._lock.read():
            return np.sort(self._row_ids[: self.count])

    def contains(self, face_id: int) -> bool:
        return int(face_id) in self._row_of

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        ids = check_ids(ids)
        with self._lock.read():
            missing = [i for i in ids.tolist() if i not in self._row_of]
            if missing:
                raise KeyError(f"face ids not in the index: {missing[:10]}")
            rows = torch.as_tensor([self._row_of[i] for i in ids.tolist()], dtype=torch.long)
            return self._gallery[rows.to(self.device)].cpu().numpy().reshape(len(ids), self.dim)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        if not len(ids):
            return
        with self._lock.write():
            self._remove_locked(ids)
            start, end = self.count, self.count + len(ids)
            self._reserve(end)
            self._gallery[start:end] = torch.from_numpy(vectors).to(self.device)
            self._row_ids[start:end] = ids
            self._row_of.update(zip(ids.tolist(), range(start, end), strict=True))

    def remove(self, ids: np.ndarray) -> int:
        """Remove these ids (physically: `purge` is the same); returns how many were present."""
        ids = check_ids(ids)
        with self._lock.write():
            return self._remove_locked(ids)

    def _remove_locked(self, ids: np.ndarray) -> int:
        # the last live rows move into the holes; the rows freed at the end are zeroed, so a removed
        # (archived, replaced) face's vector never lingers where a later purge could not find it
        before = len(self._row_of)
        removed = 0
        for face_id in ids.tolist():
            row = self._row_of.pop(face_id, None)
            if row is None:
                continue
            last = len(self._row_of)  # index of the last live row after the pop
            if row != last:
                self._gallery[row] = self._gallery[last]
                moved = int(self._row_ids[last])
                self._row_ids[row] = moved
                self._row_of[moved] = row
            removed += 1
        if removed:
            self._gallery[before - removed : before] = 0.0
        return removed

    def _reserve(self, needed: int) -> None:
        capacity = self._gallery.shape[0]
        if needed <= capacity:
            return
        # zeros, not empty: recycled allocator memory may hold vectors of faces erased since
        grown = torch.zeros(
            (max(needed, 2 * capacity, 1024), self.dim), dtype=torch.float32, device=self.device
        )
        grown[: self.count] = self._gallery[: self.count]
        self._gallery = grown
        row_ids = np.full(grown.shape[0], PAD_ID, dtype=np.int64)
        row_ids[: self.count] = self._row_ids[: self.count]
        self._row_ids = row_ids

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best-first ids and cosine similarities; rows padded with -1 / -inf past `count`."""
        queries = check_vectors(vectors, self.dim)
        k = check_k(k)
        out_ids = np.full((len(queries), k), PAD_ID, dtype=np.int64)
        out_sims = np.full((len(queries), k), PAD_SIMILARITY, dtype=np.float32)
        with self._lock.read():
            n = self.count
            take = min(k, n)
            if take == 0 or len(queries) == 0:
                return out_ids, out_sims
            gallery = self._gallery[:n]
            step = max(1, _MAX_BLOCK // n)
            with torch.inference_mode():
                for a in range(0, len(queries), step):
                    q = torch.from_numpy(queries[a : a + step]).to(self.device)
                    sims, rows = torch.topk(q @ gallery.T, take, dim=1)
                    out_sims[a : a + step, :take] = sims.cpu().numpy()
                    out_ids[a : a + step, :take] = self._row_ids[rows.cpu().numpy()]
        return out_ids, out_sims

    def _snapshot_state(self) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
        n = self.count
        return {}, [
            ("ids", self._row_ids[:n].copy()),
            # clone: on the CPU .numpy() would share memory that writers change after the lock
            ("vectors", self._gallery[:n].clone().cpu().numpy()),
        ]

    @classmethod
    def _from_snapshot(
        cls,
        model_id: str,
        dim: int,
        meta: dict[str, Any],
        sections: dict[str, SnapshotSection],
        **options: Any,
    ) -> Self:
        index = cls(model_id, dim, **options)
        ids = sections["ids"].array(np.int64)
        vectors = sections["vectors"].array(np.float32)
        if vectors.size != len(ids) * dim:
            raise ValueError(f"{len(ids)} ids but {vectors.size} vector values for dim {dim}")
        index.add(ids, vectors.reshape(len(ids), dim))
        return index
