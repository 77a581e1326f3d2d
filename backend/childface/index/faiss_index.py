"""FAISS backend: exact search for small galleries, HNSW above a size threshold.

Two stores sit behind one `FaissIndex`:

- exact: `IndexIDMap2(IndexFlatIP)`. Face ids are the FAISS ids, `remove_ids`
  works, results are exact. Used while `count <= approximate_above`.
- approximate: `IndexHNSWFlat` (inner product). HNSW cannot delete, so this
  store keeps the label -> face id table itself: a removed or replaced face's
  label is marked dead and excluded *during* the graph walk by an
  `IDSelectorBitmap` over live labels (results stay k long, dead nodes still
  route). `IndexIDMap2` is not used here because a removed-then-re-added id
  would map to two graph nodes. When dead labels exceed `compact_fraction` of
  the live ones, `rebuild_if_needed` rebuilds the graph from the live vectors.

Erasure needs more than hiding: `purge` overwrites the vectors with zeros in
place before removing them (exact store: before `remove_ids`, whose compaction
leaves the tail of its buffer as it was; HNSW: the dead nodes' rows of the
graph's flat storage), so neither memory nor the next snapshot keeps them. A
zeroed dead node is never returned (the live-label filter) and routes poorly
until the next compaction, which is fine for the few nodes an erasure kills.
A dead node's label keeps its former face id as `-2 - face_id` (negative, so
every "label >= 0 is live" test holds), which lets `purge` find the vectors of
a face removed earlier (archived, replaced) too.

Switching store (the gallery grew past the threshold, or shrank below half of
it, or the HNSW graph needs compacting) is `rebuild_if_needed()`, which the
caller runs in a background thread: it copies the live vectors under the read
lock, builds the new store with no lock held while searches and writes go on
against the old one (writes are also journalled), then replays the journal and
swaps under a short write lock.

Thread-safety: searches take the read lock (concurrent; FAISS search is
read-only), add/remove take the write lock. `omp` threads inside one FAISS call
are FAISS's business.

GPU: when faiss-gpu is installed and `gpu_device` is given, exact searches run
on a GPU copy of the flat index, refreshed lazily after writes. HNSW searches
stay on the CPU (faiss-gpu has no HNSW).
"""

from __future__ import annotations

import threading
from typing import Any, Self

import faiss
import numpy as np

from childface.index.base import (
    PAD_ID,
    PAD_SIMILARITY,
    VectorIndex,
    check_ids,
    check_k,
    check_vectors,
)

EXACT = "flat"
APPROXIMATE = "hnsw"


def _dead(labels: np.ndarray) -> np.ndarray:
    """A dead HNSW node's label from its face id, and back (the map is its own inverse)."""
    return -2 - labels


def _rows(flat: faiss.Index) -> np.ndarray:
    """A writable (ntotal, d) float32 view of a flat index's stored vectors (no copy)."""
    flat = faiss.downcast_index(flat)
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)


class _ExactStore:
    """`IndexIDMap2(IndexFlatIP)`: exact, ids are FAISS ids."""

    kind = EXACT

    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.present: set[int] = set(faiss.vector_to_array(self.index.id_map).tolist())

    @property
    def count(self) -> int:
        return self.index.ntotal

    @property
    def dead(self) -> int:
        return 0

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add_with_ids(vectors, ids)
        self.present.update(ids.tolist())

    def remove(self, ids: np.ndarray) -> int:
        hit = np.array([i for i in ids.tolist() if i in self.present], dtype=np.int64)
        if len(hit):
            self.index.remove_ids(hit)
            self.present.difference_update(hit.tolist())
        return len(hit)

    def purge(self, ids: np.ndarray) -> int:
        hit = [i for i in ids.tolist() if i in self.present]
        if hit:
            positions = np.flatnonzero(np.isin(faiss.vector_to_array(self.index.id_map), hit))
            _rows(self.index.index)[positions] = 0.0
        return self.remove(ids)

    def search(self, queries: np.ndarray, k: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        sims, ids = self.index.search(queries, k)
        return ids, sims

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        vectors = self.index.index.reconstruct_n(0, self.count)
        return ids, vectors

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.empty((0, 0))

    def sections(self) -> list[tuple[str, np.ndarray]]:
        return [("faiss", faiss.serialize_index(self.index))]


class _HnswStore:
    """`IndexHNSWFlat` + own label -> id table, dead labels filtered during search."""

    kind = APPROXIMATE

    def __init__(
        self,
        dim: int,
        m: int,
        ef_construction: int,
        index: faiss.IndexHNSWFlat | None = None,
        labels: np.ndarray | None = None,
    ) -> None:
        if index is None:
            index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = ef_construction
            labels = np.empty(0, dtype=np.int64)
        assert labels is not None and len(labels) == index.ntotal
        self.index = index
        # label (graph node) -> face id; `_dead(face id)` once the node is dead
        self.labels = labels.copy()
        self.label_of = {int(face): lab for lab, face in enumerate(self.labels.tolist()) if face >= 0}
        self._selector: tuple[np.ndarray, faiss.IDSelectorBitmap] | None = None

    @property
    def count(self) -> int:
        return len(self.label_of)

    @property
    def dead(self) -> int:
        return len(self.labels) - len(self.label_of)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        start = len(self.labels)
        self.index.add(vectors)
        self.labels = np.concatenate([self.labels, ids])
        self.label_of.update(zip(ids.tolist(), range(start, start + len(ids)), strict=True))
        self._selector = None

    def remove(self, ids: np.ndarray) -> int:
        gone = [self.label_of.pop(i) for i in ids.tolist() if i in self.label_of]
        if gone:
            self.labels[gone] = _dead(self.labels[gone])
            self._selector = None
        return len(gone)

    def purge(self, ids: np.ndarray) -> int:
        # the nodes stay in the graph (HNSW cannot delete); their stored vectors do not, live or dead
        nodes = np.flatnonzero(np.isin(self.labels, ids) | np.isin(_dead(self.labels), ids))
        if len(nodes):
            _rows(self.index.storage)[nodes] = 0.0
        return self.remove(ids)

    def _live_selector(self) -> faiss.IDSelectorBitmap:
        # called under the read lock by several searches at once; building the
        # same bitmap twice is harmless, the tuple keeps the bits alive for FAISS
        cached = self._selector
        if cached is None:
            bits = np.packbits(self.labels >= 0, bitorder="little")
            cached = (bits, faiss.IDSelectorBitmap(len(self.labels), faiss.swig_ptr(bits)))
            self._selector = cached
        return cached[1]

    def search(self, queries: np.ndarray, k: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(ef_search, k)
        if self.dead:
            params.sel = self._live_selector()
        sims, labels = self.index.search(queries, k, params=params)
        ids = self.labels[np.maximum(labels, 0)]
        ids = np.where((labels >= 0) & (ids >= 0), ids, PAD_ID)
        return ids, sims

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        live = np.flatnonzero(self.labels >= 0)
        vectors = self.index.storage.reconstruct_n(0, len(self.labels))[live]
        return self.labels[live], vectors

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        return (
            np.stack([self.index.storage.reconstruct(self.label_of[int(i)]) for i in ids])
            if len(ids)
            else np.empty((0, 0))
        )

    def sections(self) -> list[tuple[str, np.ndarray]]:
        # copies: the caller writes them out after releasing the read lock
        return [("faiss", faiss.serialize_index(self.index)), ("labels", self.labels.copy())]


class FaissIndex(VectorIndex):
    """Cosine search over one model's face vectors with FAISS; see the module docstring."""

    kind = "faiss"

    def __init__(
        self,
        model_id: str,
        dim: int,
        *,
        approximate_above: int = 200_000,
        hnsw_m: int = 32,
        hnsw_ef_construction: int = 80,
        hnsw_ef_search: int = 128,
        compact_fraction: float = 0.2,
        gpu_device: int | None = None,
    ) -> None:
        super().__init__(model_id, dim)
        if approximate_above < 1 or hnsw_m < 2 or hnsw_ef_construction < 1 or hnsw_ef_search < 1:
            raise ValueError("approximate_above, hnsw_m, ef_construction and ef_search must be positive")
        if gpu_device is not None and faiss.get_num_gpus() <= gpu_device:
            raise ValueError(f"gpu_device={gpu_device} but FAISS sees {faiss.get_num_gpus()} GPU(s)")
        self.approximate_above = approximate_above
        self.hnsw_m = hnsw_m
        self.hnsw_ef_construction = hnsw_ef_construction
        self.hnsw_ef_search = hnsw_ef_search
        self.compact_fraction = compact_fraction
        self.gpu_device = gpu_device
        self._store: _ExactStore | _HnswStore = _ExactStore(dim)
        # ops applied while a rebuild runs, replayed onto the new store before the swap
        self._journal: list[tuple[str, np.ndarray, np.ndarray | None]] | None = None
        self._rebuild_lock = threading.Lock()
        self._gpu_lock = threading.Lock()
        self._gpu_mirror: faiss.Index | None = None

    # --- state ---------------------------------------------------------------

    @property
    def backend(self) -> str:
        """'flat' (exact) or 'hnsw' (approximate): the store serving searches now."""
        return self._store.kind

    @property
    def count(self) -> int:
        return self._store.count

    @property
    def dead(self) -> int:
        """Dead HNSW nodes (removed or replaced faces) not yet compacted away."""
        return self._store.dead

    def ids(self) -> np.ndarray:
        with self._lock.read():
            if isinstance(self._store, _ExactStore):
                return np.sort(np.fromiter(self._store.present, dtype=np.int64, count=self.count))
            return np.sort(np.fromiter(self._store.label_of, dtype=np.int64, count=self.count))

    def contains(self, face_id: int) -> bool:
        store = self._store
        if isinstance(store, _ExactStore):
            return int(face_id) in store.present
        return int(face_id) in store.label_of

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        ids = check_ids(ids)
        with self._lock.read():
            missing = [i for i in ids.tolist() if not self.contains(i)]
            if missing:
                raise KeyError(f"face ids not in the index: {missing[:10]}")
            return self._store.vectors_of(ids).reshape(len(ids), self.dim)

    # --- writes --------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        if not len(ids):
            return
        with self._lock.write():
            if self._store.count == 0 and self._store.dead == 0 and len(ids) > self.approximate_above:
                # bulk load of an empty index (rebuild from the DB): build HNSW directly
                self._store = _HnswStore(self.dim, self.hnsw_m, self.hnsw_ef_construction)
            self._store.remove(ids)  # upsert: a replaced face must not appear twice
            self._store.add(ids, vectors)
            if self._journal is not None:
                self._journal.append(("add", ids, vectors.copy()))
            self._gpu_mirror = None

    def remove(self, ids: np.ndarray) -> int:
        ids = check_ids(ids)
        if not len(ids):
            return 0
        with self._lock.write():
            removed = self._store.remove(ids)
            if self._journal is not None:
                self._journal.append(("remove", ids, None))
            if removed:
                self._gpu_mirror = None
            return removed

    def purge(self, ids: np.ndarray) -> int:
        """Remove and overwrite these faces' vectors (see the module docstring)."""
        ids = check_ids(ids)
        if not len(ids):
            return 0
        with self._lock.write():
            purged = self._store.purge(ids)
            if self._journal is not None:
                self._journal.append(("purge", ids, None))
            if purged:
                self._gpu_mirror = None
            return purged

    # --- search --------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Best-first ids and cosine similarities; rows padded with -1 / -inf past `count`."""
        queries = check_vectors(vectors, self.dim)
        k = check_k(k)
        with self._lock.read():
            if len(queries) == 0:
                return np.empty((0, k), np.int64), np.empty((0, k), np.float32)
            if self.gpu_device is not None and isinstance(self._store, _ExactStore):
                sims, ids = self._gpu_index().search(queries, k)
            else:
                ids, sims = self._store.search(queries, k, self.hnsw_ef_search)
        ids = ids.astype(np.int64, copy=False)
        sims = np.where(ids >= 0, sims, PAD_SIMILARITY).astype(np.float32, copy=False)
        return ids, sims

    def _gpu_index(self) -> faiss.Index:
        with self._gpu_lock:
            if self._gpu_mirror is None:
                resources = faiss.StandardGpuResources()
                self._gpu_mirror = faiss.index_cpu_to_gpu(resources, self.gpu_device, self._store.index)
                self._gpu_resources = resources  # must outlive the mirror
            return self._gpu_mirror

    # --- switching stores ------------------------------------------------------

    def wanted_backend(self) -> str:
        """The store this gallery should be served by now (hysteresis: back to flat below half)."""
        if isinstance(self._store, _HnswStore):
            return EXACT if self.count <= self.approximate_above // 2 else APPROXIMATE
        return APPROXIMATE if self.count > self.approximate_above else EXACT

    def needs_rebuild(self) -> bool:
        store = self._store
        if self.wanted_backend() != store.kind:
            return True
        return store.dead > self.compact_fraction * max(store.count, 1)

    def rebuild_if_needed(self) -> bool:
        """Switch to the right store or compact HNSW; run it off the request path.

        Searches are never blocked by the build, only by the final swap (a journal
        replay). Returns whether a rebuild happened; a second concurrent call
        returns False at once.
        """
        if not self.needs_rebuild() or not self._rebuild_lock.acquire(blocking=False):
            return False
        try:
            with self._lock.read():
                target = self.wanted_backend()
                ids, vectors = self._store.export()
                self._journal = []
            try:
                new_store = self._new_store(target)
                new_store.add(ids, vectors)
            except BaseException:
                with self._lock.write():
                    self._journal = None
                raise
            finally:
                vectors.fill(0.0)  # the export may hold faces purged meanwhile: leave no copy
                del ids, vectors
            with self._lock.write():
                for op, op_ids, op_vectors in self._journal:
                    if op == "purge":
                        new_store.purge(op_ids)
                        continue
                    new_store.remove(op_ids)
                    if op == "add":
                        new_store.add(op_ids, op_vectors)
                self._journal = None
                self._store = new_store
                self._gpu_mirror = None
            return True
        finally:
            self._rebuild_lock.release()

    def _new_store(self, kind: str) -> _ExactStore | _HnswStore:
        if kind == APPROXIMATE:
            return _HnswStore(self.dim, self.hnsw_m, self.hnsw_ef_construction)
        return _ExactStore(self.dim)

    # --- snapshots -------------------------------------------------------------

    def _snapshot_state(self) -> tuple[dict[str, Any], list[tuple[str, np.ndarray]]]:
        meta = {
            "backend": self._store.kind,
            "hnsw_m": self.hnsw_m,
            "hnsw_ef_construction": self.hnsw_ef_construction,
        }
        return meta, self._store.sections()

    @classmethod
    def _from_snapshot(
        cls, model_id: str, dim: int, meta: dict[str, Any], sections: dict[str, memoryview], **options: Any
    ) -> Self:
        index = cls(model_id, dim, **options)
        raw = faiss.deserialize_index(np.frombuffer(sections["faiss"], dtype=np.uint8))
        if raw.d != dim:
            raise ValueError(f"FAISS index has dim {raw.d}, header says {dim}")
        if meta["backend"] == APPROXIMATE:
            labels = np.frombuffer(sections["labels"], dtype=np.int64)
            # deserialize_index returns the concrete class; a second (downcast) proxy
            # would not own the C++ object and dangle once `raw` is collected
            if not isinstance(raw, faiss.IndexHNSWFlat) or len(labels) != raw.ntotal:
                raise ValueError("HNSW section does not match its label table")
            index._store = _HnswStore(dim, meta["hnsw_m"], meta["hnsw_ef_construction"], raw, labels)
        elif meta["backend"] == EXACT:
            if not isinstance(raw, faiss.IndexIDMap2):
                raise ValueError(f"exact section holds {type(raw).__name__}, not IndexIDMap2")
            index._store = _ExactStore(dim, raw)
        else:
            raise ValueError(f"unknown backend {meta['backend']!r}")
        return index
