"""`childface bench search`: speed and recall of the vector index on face-like data.

Why synthetic data with face geometry: recall depends on the data far more
than on the index. Uniform random vectors in 128-d have nearly tied nearest
neighbours, where exact-id recall collapses for any approximate index; real
face embeddings instead come in tight clusters (one per person) with a clear
gap to everyone else. `face_like_data` builds that: identity centres sharing a
common direction (other-person cosine ~0.6-0.8, like dlib's descriptor),
`per_identity` samples per centre (same-person cosine ~`within`), and queries
that are *new* samples of enrolled identities (a child seen again).

For each gallery size and dimension the run measures, in one process:

- exact ground truth (blockwise numpy matmul), and a plain numpy brute-force
  single-query search (`gallery @ q` + `argpartition`): the baseline;
- the index under test: build time, index bytes and RSS growth, single-query
  p50/p99 latency, batch throughput, recall@1 / recall@10 against exact search
  and identity recall@1 (top hit is the same person as exact search's).

`speedup_vs_numpy` = numpy p50 / index p50 (single queries).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from childface.config import Settings
from childface.index import FaissIndex, VectorIndex, create_index

STANDARD_SIZES = (10_000, 100_000, 1_000_000)
#: queries per batch in the throughput figure
BATCH = 256
#: numpy brute force is slow at 1M (tens of ms a query): time at most this many
NUMPY_LATENCY_QUERIES = 200


@dataclass(frozen=True)
class FaceLikeData:
    gallery: np.ndarray  # (n, dim) unit float32
    labels: np.ndarray  # (n,) identity of each gallery row
    queries: np.ndarray  # (q, dim) unit float32, new samples of enrolled identities
    query_labels: np.ndarray  # (q,)


def face_like_data(
    n: int,
    dim: int,
    *,
    n_queries: int = 1000,
    per_identity: int = 5,
    within: float = 0.95,
    between: float = 0.7,
    seed: int = 0,
) -> FaceLikeData:
    """Clustered unit vectors: same-person cosine ~`within`, centre-to-centre cosine ~`between`.

    Centre i = sqrt(between)*c + sqrt(1-between)*r_i with c a shared unit
    direction and r_i random unit vectors orthogonal to it; a sample is
    centre + isotropic noise of squared norm 1/within - 1, normalised, so two
    samples of one person have expected cosine `within`.
    """
    if not 0 < between < within < 1:
        raise ValueError("need 0 < between < within < 1")
    rng = np.random.default_rng(seed)
    n_ids = max(1, n // per_identity)
    common = rng.standard_normal(dim).astype(np.float32)
    common /= np.linalg.norm(common)
    spread = rng.standard_normal((n_ids, dim), dtype=np.float32)
    spread -= np.outer(spread @ common, common)
    spread /= np.linalg.norm(spread, axis=1, keepdims=True)
    centres = np.sqrt(between) * common + np.sqrt(1 - between) * spread
    noise = np.float32(np.sqrt(1 / within - 1) / np.sqrt(dim))

    def samples(of: np.ndarray) -> np.ndarray:
        out = np.empty((len(of), dim), dtype=np.float32)
        for a in range(0, len(of), 100_000):  # bounded temporaries at 1M x 512
            block = centres[of[a : a + 100_000]]
            block += noise * rng.standard_normal(block.shape, dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[a : a + 100_000] = block
        return out

    labels = np.arange(n) % n_ids
    query_labels = rng.integers(0, n_ids, n_queries)
    return FaceLikeData(samples(labels), labels, samples(query_labels), query_labels)


def exact_top_k(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ground-truth row indices (q, k), best first, by blockwise matmul."""
    k = min(k, len(gallery))
    out = np.empty((len(queries), k), dtype=np.int64)
    step = max(1, (256 * 1024 * 1024) // (4 * len(gallery)))
    for a in range(0, len(queries), step):
        sims = queries[a : a + step] @ gallery.T
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        out[a : a + step] = np.take_along_axis(top, order, axis=1)
    return out


def numpy_search_one(gallery: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """The baseline: one query by a plain matrix-vector product and a partial sort."""
    sims = gallery @ query
    top = np.argpartition(-sims, k - 1)[:k]
    return top[np.argsort(-sims[top])]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _percentiles_ms(seconds: list[float]) -> tuple[float, float]:
    arr = np.asarray(seconds) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


_STDERR = Console(stderr=True)


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeElapsedColumn(),
        console=_STDERR,
        disable=not enabled,
        transient=True,
    )
    with progress:
        yield progress


def _status(enabled: bool, message: str) -> None:
    """One line on stderr per phase: visible in logs, where a live bar is not drawn."""
    if enabled:
        _STDERR.log(message)


def _index_label(index: VectorIndex) -> str:
    if isinstance(index, FaissIndex):
        if index.backend == "hnsw":
            return f"faiss-hnsw(M={index.hnsw_m},efC={index.hnsw_ef_construction},ef={index.hnsw_ef_search})"
        return "faiss-flat-gpu" if index.gpu_device is not None else "faiss-flat"
    return f"{index.kind}({getattr(index, 'device', '')})"


def _index_bytes(index: VectorIndex) -> int:
    """Bytes held by the index structures (vectors + graph + id tables), not Python overhead."""
    base = index.count * index.dim * 4 + index.count * 8
    if isinstance(index, FaissIndex) and index.backend == "hnsw":
        hnsw = index._store.index.hnsw
        base += hnsw.neighbors.size() * 4 + hnsw.offsets.size() * 8 + hnsw.levels.size() * 4
    return base


def bench_one(
    data: FaceLikeData,
    index: VectorIndex,
    *,
    k: int = 10,
    ef_search: Sequence[int] = (),
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Build `index` from `data`, then measure it (once per efSearch value for HNSW)."""
    gallery, queries = data.gallery, data.queries
    n, dim = gallery.shape
    k = min(k, n)
    _status(progress, f"n={n:,} dim={dim}: exact ground truth and numpy baseline")
    truth = exact_top_k(gallery, queries, k)
    ids = np.arange(n, dtype=np.int64)  # face id = gallery row

    numpy_times = []
    for q in queries[:NUMPY_LATENCY_QUERIES]:
        start = time.perf_counter()
        numpy_search_one(gallery, q, k)
        numpy_times.append(time.perf_counter() - start)
    numpy_p50, numpy_p99 = _percentiles_ms(numpy_times)

    _status(progress, f"n={n:,} dim={dim}: building the index")
    rss_before = _rss_bytes()
    chunk = 50_000
    with _progress(progress) as bar:
        task = bar.add_task(f"build n={n:,} dim={dim}", total=n)
        start = time.perf_counter()
        for a in range(0, n, chunk):
            index.add(ids[a : a + chunk], gallery[a : a + chunk])
            bar.advance(task, min(chunk, n - a))
        if isinstance(index, FaissIndex):
            index.rebuild_if_needed()  # HNSW past the threshold: the gallery's background thread does this
        build_s = time.perf_counter() - start
    rss_delta = _rss_bytes() - rss_before
    _status(progress, f"n={n:,} dim={dim}: built in {build_s:.1f} s, measuring")

    exact_identity = float(np.mean(data.labels[truth[:, 0]] == data.query_labels))
    efs = (
        list(ef_search) if isinstance(index, FaissIndex) and index.backend == "hnsw" and ef_search else [None]
    )
    rows = []
    for ef in efs:
        if ef is not None:
            index.hnsw_ef_search = ef
        for q in queries[:10]:  # warm caches and thread pools
            index.search(q[None], k)
        times = []
        for q in queries:
            start = time.perf_counter()
            index.search(q[None], k)
            times.append(time.perf_counter() - start)
        p50, p99 = _percentiles_ms(times)
        start = time.perf_counter()
        found = np.concatenate(
            [index.search(queries[a : a + BATCH], k)[0] for a in range(0, len(queries), BATCH)]
        )
        throughput = len(queries) / (time.perf_counter() - start)
        recall_10 = np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth, strict=True)])
        top = found[:, 0]
        rows.append(
            {
                "n": n,
                "dim": dim,
                "index": _index_label(index),
                "queries": len(queries),
                "k": k,
                "recall_at_1": float(np.mean(top == truth[:, 0])),
                "recall_at_10": float(recall_10),
                "identity_recall_at_1": float(
                    np.mean((top >= 0) & (data.labels[top] == data.labels[truth[:, 0]]))
                ),
                "exact_identity_accuracy": exact_identity,
                "p50_ms": p50,
                "p99_ms": p99,
                "numpy_p50_ms": numpy_p50,
                "numpy_p99_ms": numpy_p99,
                "speedup_vs_numpy": numpy_p50 / p50,
                "throughput_qps": float(throughput),
                "batch": BATCH,
                "build_s": build_s,
                "index_bytes": _index_bytes(index),
                "rss_delta_bytes": rss_delta,
            }
        )
    return rows


def gallery_sizes(n: int) -> list[int]:
    """The standard sizes up to n, plus n itself."""
    return sorted({s for s in STANDARD_SIZES if s <= n} | {n})


def run_search_benchmark(
    settings: Settings,
    *,
    n: int,
    dims: Sequence[int],
    n_queries: int = 1000,
    k: int = 10,
    ef_search: Sequence[int] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """All (size, dim) combinations. On the CPU the approximate (HNSW) index is measured at
    every size; on CUDA the index `create_index` picks there (exact on the GPU)."""
    device = settings.resolved_device
    results = []
    for dim in dims:
        for size in gallery_sizes(n):
            data = face_like_data(size, dim, n_queries=n_queries)
            if device == "cpu":
                # approximate_above=1 forces HNSW so its recall is measured at every size
                bench_settings = settings.model_copy(update={"index_approximate_above": 1})
            else:
                bench_settings = settings.model_copy(update={"index_approximate_above": size + 1})
            index = create_index(bench_settings, f"bench-{dim}", dim)
            results.extend(bench_one(data, index, k=k, ef_search=ef_search, progress=progress))
            del index, data
    return {
        "device": device,
        "cpu_count": os.cpu_count(),
        "faiss_version": faiss.__version__,
        "faiss_omp_threads": faiss.omp_get_max_threads(),
        "data": "face-like: 5 samples/identity, same-person cos ~0.95, centre-centre cos ~0.7",
        "results": results,
    }
