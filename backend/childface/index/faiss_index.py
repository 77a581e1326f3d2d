"""FAISS backend: exact search for small galleries, HNSW above a size threshold.

Two stores sit behind one `FaissIndex`:

- exact: the vectors in one numpy array (rows 0..count-1 live; a removal moves
  the last row into the hole), searched by a matrix product + `argpartition`.
  Measured on the 2-core reference machine, numpy's single-query search beats
  FAISS's `IndexFlatIP` at every size (FAISS's OpenMP threads cost more than
  they save on one query: 26.6 vs 0.83 ms at 10k faces under load), and a batch
  of queries is one matrix product. Used while `count <= approximate_above`.
- approximate: `IndexHNSWFlat` (inner product). HNSW cannot delete, so this
  store keeps the label -> face id table itself: a removed or replaced face's
  label is marked dead and excluded *during* the graph walk by an
  `IDSelectorBitmap` over live labels (results stay k long, dead nodes still
  route). When dead labels exceed `compact_fraction` of the live ones,
  `rebuild_if_needed` rebuilds the graph from the live vectors. The graph's
  flat storage is the only copy of the vectors (`vectors_of` reads it).

Face id -> row/label lookups are numpy arrays (`SlotTable`), not dicts: at a
million faces a dict would cost more than the vectors.

`add` never builds HNSW, even when it bulk-loads an empty index past the
threshold: the exact store serves at once, and the caller's background thread
(`rebuild_if_needed`) builds the graph and swaps it in. A gallery is therefore
ready as soon as its vectors are in memory.

Erasure needs more than hiding: `purge` overwrites the vectors with zeros in
place (exact store: every removal zeroes the rows it frees at the end; HNSW: the dead
nodes' rows of the graph's flat storage), so neither memory nor the next
snapshot keeps them. A zeroed dead node is never returned (the live-label
filter) and routes poorly until the next compaction, which is fine for the few
nodes an erasure kills. A dead node's label keeps its former face id as
`-2 - face_id` (negative, so every "label >= 0 is live" test holds), which lets
`purge` find the vectors of a face removed earlier (archived, replaced) too; a
purged node's label becomes -1, so it names no face and a second purge skips it.

Switching store (the gallery grew past the threshold, or shrank below half of
it, or the HNSW graph needs compacting) is `rebuild_if_needed()`, which the
caller runs in a background thread: it copies the live vectors under the read
lock, builds the new store with no lock held while searches and writes go on
against the old one (writes are also journalled), then replays the journal and
swaps under a short write lock.

Thread-safety: searches take the read lock (concurrent; both stores' searches
only read), add/remove take the write lock.

GPU: when faiss-gpu is installed and `gpu_device` is given, exact searches run
on a GPU `IndexFlatIP` copy of the exact store, refreshed lazily after writes.
HNSW searches stay on the CPU (faiss-gpu has no HNSW), and so does a search for
more than `GPU_MAX_K` results (FAISS's GPU top-k refuses them; the gallery may ask
for up to 4096 faces when one child has many templates).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from typing import Any, Self

import faiss
import numpy as np

from childface.index.base import (
    PAD_ID,
    PAD_SIMILARITY,
    SnapshotSection,
    VectorIndex,
    check_ids,
    check_k,
    check_vectors,
)
from childface.index.slots import ABSENT, SlotTable

EXACT = "flat"
APPROXIMATE = "hnsw"

#: bound on the (gallery x queries) similarity block of one exact search, in float32 elements
_MAX_BLOCK = 32 * 1024 * 1024
#: up to this many queries, exact search multiplies with `einsum` rather than BLAS. A query
#: is a matrix-vector product, memory-bound: BLAS's threads only add their wake-up and spin
#: (2-core machine at load ~10: 10k faces 20 ms with OpenBLAS's 2 threads, 0.19 ms einsum;
#: 50k 20 vs 1.3 ms); wider batches are true matrix products, where BLAS wins
_EINSUM_QUERIES = 4
#: the largest k FAISS's GPU flat search accepts; a wider search runs on the CPU copy instead
GPU_MAX_K = 2048
#: bytes per read when FAISS deserialises a graph straight from the snapshot file
_READ_CHUNK = 4 << 20


#: label of a purged HNSW node: dead (negative) and no face id's `_dead` image
_PURGED = -1


def _dead(labels: np.ndarray) -> np.ndarray:
    """A dead HNSW node's label from its face id, and back (the map is its own inverse)."""
    return -2 - labels


def _release_free_memory() -> None:
    """Hand memory freed by a replaced store back to the OS (glibc keeps freed heap otherwise)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _rows(flat: faiss.Index) -> np.ndarray:
    """A writable (ntotal, d) float32 view of a flat index's stored vectors (no copy)."""
    flat = faiss.downcast_index(flat)
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)


def _grown(array: np.ndarray, needed: int) -> np.ndarray:
    """`array` with room for `needed` rows (doubling), same leading rows."""
    if needed <= len(array):
        return array
    out = np.zeros((max(needed, 2 * len(array), 1024), *array.shape[1:]), dtype=array.dtype)
    out[: len(array)] = array
    return out


def top_k_rows(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k rows of `vectors` per query, best first: (q, k) rows and similarities (k <= n)."""
    n = len(vectors)
    rows = np.empty((len(queries), k), dtype=np.int64)
    sims = np.empty((len(queries), k), dtype=np.float32)
    step = max(1, _MAX_BLOCK // max(n, 1))
    for a in range(0, len(queries), step):
        chunk = queries[a : a + step]
        if len(chunk) <= _EINSUM_QUERIES:
            # numpy's own loop, no BLAS threads: see _EINSUM_QUERIES
            block = np.stack([np.einsum("ij,j->i", vectors, q) for q in chunk], axis=1)
        else:
            block = vectors @ chunk.T  # (n, q): one BLAS call for the batch
        top = np.argpartition(block, n - k, axis=0)[n - k :] if k < n else np.arange(n)[:, None]
        top = np.broadcast_to(top, (top.shape[0], block.shape[1]))
        top_sims = np.take_along_axis(block, top, axis=0)
        order = np.argsort(-top_sims, axis=0, kind="stable")
        rows[a : a + step] = np.take_along_axis(top, order, axis=0).T
        sims[a : a + step] = np.take_along_axis(top_sims, order, axis=0).T
    return rows, sims


class _ExactStore:
    """Vectors in a numpy array, rows 0..count-1 live; exact search by matrix product."""

    kind = EXACT

    def __init__(self, dim: int, ids: np.ndarray | None = None, vectors: np.ndarray | None = None) -> None:
        self.dim = dim
        self.vectors = vectors if vectors is not None else np.zeros((0, dim), dtype=np.float32)
        self.row_ids = ids if ids is not None else np.zeros(0, dtype=np.int64)
        self.n = len(self.row_ids)
        self.row_of = SlotTable()
        self.row_of.set(self.row_ids[: self.n], np.arange(self.n))

    @property
    def count(self) -> int:
        return self.n

    @property
    def dead(self) -> int:
        return 0

    def contains(self, face_id: int) -> bool:
        return self.row_of.get_one(face_id) != ABSENT

    def present(self, ids: np.ndarray) -> np.ndarray:
        return self.row_of.get(ids) != ABSENT

    def ids(self) -> np.ndarray:
        return np.sort(self.row_ids[: self.n])

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        start, end = self.n, self.n + len(ids)
        self.vectors = _grown(self.vectors, end)
        self.row_ids = _grown(self.row_ids, end)
        self.vectors[start:end] = vectors
        self.row_ids[start:end] = ids
        self.row_of.set(ids, np.arange(start, end))
        self.n = end

    def remove(self, ids: np.ndarray) -> int:
        """Fill the holes with the last live rows, so rows 0..count-1 stay the live ones.

        The rows freed at the end are zeroed: a removed (archived, replaced) face's vector must
        not linger there, where a later purge of its id could no longer find it."""
        rows = self.row_of.get(ids)
        rows = np.sort(rows[rows != ABSENT])
        if not len(rows):
            return 0
        end = self.n - len(rows)
        holes = rows[rows < end]
        tail = np.arange(end, self.n)
        movers = tail[~np.isin(tail, rows)]
        self.row_of.clear(self.row_ids[rows])
        self.vectors[holes] = self.vectors[movers]
        self.row_ids[holes] = self.row_ids[movers]
        self.row_of.set(self.row_ids[holes], holes)
        self.vectors[end : self.n] = 0.0
        self.n = end
        return len(rows)

    def purge(self, ids: np.ndarray) -> int:
        return self.remove(ids)  # remove leaves no copy of a removed vector behind

    def holds(self, ids: np.ndarray) -> bool:
        return bool(self.present(ids).any())

    def search(self, queries: np.ndarray, k: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        take = min(k, self.n)
        ids = np.full((len(queries), k), PAD_ID, dtype=np.int64)
        sims = np.full((len(queries), k), PAD_SIMILARITY, dtype=np.float32)
        if take:
            rows, top = top_k_rows(self.vectors[: self.n], queries, take)
            ids[:, :take] = self.row_ids[rows]
            sims[:, :take] = top
        return ids, sims

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        return self.row_ids[: self.n].copy(), self.vectors[: self.n].copy()

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        return self.vectors[self.row_of.get(ids)]

    def sections(self) -> list[tuple[str, np.ndarray]]:
        # copies: the caller writes them out after releasing the read lock
        return [("ids", self.row_ids[: self.n].copy()), ("vectors", self.vectors[: self.n].copy())]


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
        # label (graph node) -> face id; `_dead(face id)` once the node is dead; grows by doubling
        self._labels = np.array(labels, dtype=np.int64)
        self.ntotal = len(labels)
        self.label_of = SlotTable()
        live = np.flatnonzero(self._labels >= 0)
        self.label_of.set(self._labels[live], live)
        self._selector: tuple[np.ndarray, faiss.IDSelectorBitmap] | None = None

    @property
    def labels(self) -> np.ndarray:
        return self._labels[: self.ntotal]

    @property
    def count(self) -> int:
        return self.label_of.count

    @property
    def dead(self) -> int:
        return self.ntotal - self.label_of.count

    def contains(self, face_id: int) -> bool:
        return self.label_of.get_one(face_id) != ABSENT

    def present(self, ids: np.ndarray) -> np.ndarray:
        return self.label_of.get(ids) != ABSENT

    def ids(self) -> np.ndarray:
        return self.label_of.keys()

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        start = self.ntotal
        self.index.add(vectors)
        self._labels = _grown(self._labels, start + len(ids))
        self._labels[start : start + len(ids)] = ids
        self.ntotal = start + len(ids)
        self.label_of.set(ids, np.arange(start, self.ntotal))
        self._selector = None

    def remove(self, ids: np.ndarray) -> int:
        gone = self.label_of.get(ids)
        gone = gone[gone != ABSENT]
        if len(gone):
            self.label_of.clear(self._labels[gone])
            self._labels[gone] = _dead(self._labels[gone])
            self._selector = None
        return len(gone)

    def nodes_of(self, ids: np.ndarray) -> np.ndarray:
        """The graph nodes holding a vector of these faces, live or dead."""
        labels = self.labels
        return np.flatnonzero(np.isin(labels, ids) | np.isin(_dead(labels), ids))

    def holds(self, ids: np.ndarray) -> bool:
        return bool(len(self.nodes_of(ids)))

    def purge(self, ids: np.ndarray) -> int:
        # the nodes stay in the graph (HNSW cannot delete); their stored vectors do not, live or dead
        nodes = self.nodes_of(ids)
        if len(nodes):
            _rows(self.index.storage)[nodes] = 0.0
        removed = self.remove(ids)
        # a purged node forgets its face id too (-1: dead, nobody's), so nothing holds these faces now
        self._labels[nodes] = _PURGED
        return removed

    def _live_selector(self) -> faiss.IDSelectorBitmap:
        # called under the read lock by several searches at once; building the
        # same bitmap twice is harmless, the tuple keeps the bits alive for FAISS
        cached = self._selector
        if cached is None:
            bits = np.packbits(self.labels >= 0, bitorder="little")
            cached = (bits, faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bits)))
            self._selector = cached
        return cached[1]

    def search(self, queries: np.ndarray, k: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(ef_search, k)
        if self.dead:
            params.sel = self._live_selector()
        sims, labels = self.index.search(queries, k, params=params)
        ids = self._labels[np.maximum(labels, 0)]
        ids = np.where((labels >= 0) & (ids >= 0), ids, PAD_ID)
        return ids, sims

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        live = np.flatnonzero(self.labels >= 0)
        return self.labels[live], _rows(self.index.storage)[live]  # fancy indexing: a copy

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        return _rows(self.index.storage)[self.label_of.get(ids)]

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
        approximate_above: int = 30_000,
        hnsw_m: int = 16,
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
            return self._store.ids()

    def contains(self, face_id: int) -> bool:
        return self._store.contains(int(face_id))

    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        ids = check_ids(ids)
        with self._lock.read():
            present = self._store.present(ids)
            if not present.all():
                raise KeyError(f"face ids not in the index: {ids[~present][:10].tolist()}")
            return self._store.vectors_of(ids).reshape(len(ids), self.dim)

    def holds(self, ids: np.ndarray) -> bool:
        """Whether memory holds a vector of any of these faces, present or not (a dead HNSW
        node of an archived or replaced face): what `purge` would overwrite."""
        ids = check_ids(ids)
        with self._lock.read():
            return self._store.holds(ids)

    # --- writes --------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        if not len(ids):
            return
        with self._lock.write():
            self._store.remove(ids)  # upsert: a replaced face must not appear twice
            self._store.add(ids, vectors)
            if self._journal is not None:
                self._journal.append(("add", ids, vectors.copy()))
            self._gpu_mirror = None

    def bulk_load(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """An empty index takes `vectors` over as its exact store (no copy); HNSW comes later,
        from `rebuild_if_needed` in the background."""
        vectors = check_vectors(vectors, self.dim)
        ids = check_ids(ids, len(vectors))
        with self._lock.write():
            if self._store.count or self._store.dead or self._journal is not None:
                self._store.remove(ids)
                self._store.add(ids, vectors)
                if self._journal is not None:
                    self._journal.append(("add", ids, vectors.copy()))
            else:
                self._store = _ExactStore(self.dim, ids, vectors)
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
            store = self._store
            on_gpu = self.gpu_device is not None and isinstance(store, _ExactStore) and store.count
            if on_gpu and k <= GPU_MAX_K:
                sims, rows = self._gpu_index().search(queries, k)
                ids = np.where(rows >= 0, store.row_ids[np.maximum(rows, 0)], PAD_ID)
            else:
                ids, sims = store.search(queries, k, self.hnsw_ef_search)
        ids = ids.astype(np.int64, copy=False)
        sims = np.where(ids >= 0, sims, PAD_SIMILARITY).astype(np.float32, copy=False)
        return ids, sims

    def _gpu_index(self) -> faiss.Index:
        with self._gpu_lock:
            if self._gpu_mirror is None:
                store = self._store
                flat = faiss.IndexFlatIP(self.dim)
                flat.add(store.vectors[: store.count])  # GPU row r = exact-store row r
                resources = faiss.StandardGpuResources()
                self._gpu_mirror = faiss.index_cpu_to_gpu(resources, self.gpu_device, flat)
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
            # the build is batch work off the request path: all cores, whatever this thread's
            # OpenMP default (the API process starts with one thread per FAISS call)
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(os.cpu_count() or 1)
            try:
                new_store = self._new_store(target)
                new_store.add(ids, vectors)
            except BaseException:
                with self._lock.write():
                    self._journal = None
                raise
            finally:
                faiss.omp_set_num_threads(threads)
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
                old, self._store = self._store, new_store
                self._gpu_mirror = None
            del old  # the replaced store's memory goes now, not at the next collection
            _release_free_memory()
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
        cls,
        model_id: str,
        dim: int,
        meta: dict[str, Any],
        sections: dict[str, SnapshotSection],
        **options: Any,
    ) -> Self:
        index = cls(model_id, dim, **options)
        if meta["backend"] == APPROXIMATE:
            labels = sections["labels"].array(np.int64)
            # FAISS reads the graph straight from the file: no second copy of the payload
            reader = faiss.PyCallbackIOReader(sections["faiss"].reader(), _READ_CHUNK)
            raw = faiss.read_index(reader)
            if not isinstance(raw, faiss.IndexHNSWFlat) or raw.d != dim or len(labels) != raw.ntotal:
                raise ValueError("HNSW section does not match its label table or dimension")
            index._store = _HnswStore(dim, meta["hnsw_m"], meta["hnsw_ef_construction"], raw, labels)
        elif meta["backend"] == EXACT:
            ids = sections["ids"].array(np.int64)
            vectors = sections["vectors"].array(np.float32)
            if vectors.size != len(ids) * dim:
                raise ValueError(f"{len(ids)} ids but {vectors.size} vector values for dim {dim}")
            index._store = _ExactStore(dim, ids, vectors.reshape(len(ids), dim))
        else:
            raise ValueError(f"unknown backend {meta['backend']!r}")
        return index
