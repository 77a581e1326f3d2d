"""Milvus against FAISS behind the same index interface: insert rate, search latency, reload, purge.

    python -m childface.bench.milvus --faces 100000 [--uri http://host:19530] [--json]

Both indexes get the same face-like vectors (`bench.search.face_like_data`)
in the same process, interleaved batch by batch and query by query, so
machine load hits both alike; the load average is reported before and after.
Without `--uri` Milvus is Milvus Lite in a scratch folder (in this process);
with it, a server (its collection is dropped at the end).

Reported per backend: `insert_faces_per_s` (add in batches of 10k),
`search_p50_ms` / `search_p95_ms` (one query, k=10), `recall_at_10` against
exact search, `save_s` / `load_s` (snapshot round trip: Milvus's snapshot
holds ids only, its load checks the collection), `purge_5_s` (erasure of five
faces: FAISS overwrites in memory; Lite rewrites the collection; a server
compacts).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from childface.bench.search import face_like_data
from childface.index import FaissIndex, VectorIndex
from childface.index.milvus_index import MilvusIndex, milvus_client

MODEL = "bench-milvus"
BATCH = 10_000


def _ms(samples: list[float], q: float) -> float:
    return round(float(np.quantile(np.asarray(samples), q)) * 1000, 3)


def run_milvus_benchmark(
    faces: int, *, dim: int = 128, queries: int = 200, uri: str | None = None
) -> dict[str, Any]:
    data = face_like_data(faces, dim, n_queries=queries, seed=7)
    ids = np.arange(faces, dtype=np.int64)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="childface-bench-milvus-") as scratch:
        root = Path(scratch)
        indexes: dict[str, VectorIndex] = {
            "faiss": FaissIndex(MODEL, dim),
            "milvus": MilvusIndex(MODEL, dim, uri=uri or str(root / "milvus.db"), collection_prefix="bench_"),
        }
        indexes["milvus"].watermark = 0  # a fresh collection: drop whatever an earlier run left
        insert = {name: 0.0 for name in indexes}
        for a in range(0, faces, BATCH):
            for name, index in indexes.items():
                started = time.perf_counter()
                index.add(ids[a : a + BATCH], data.gallery[a : a + BATCH])
                insert[name] += time.perf_counter() - started
        faiss_index = indexes["faiss"]
        assert isinstance(faiss_index, FaissIndex)
        started = time.perf_counter()
        faiss_index.rebuild_if_needed()  # HNSW above the switch point, as the gallery's thread would
        hnsw_build_s = time.perf_counter() - started
        exact = np.concatenate(
            [
                np.argpartition(-(block @ data.gallery.T), 10, axis=1)[:, :10]
                for block in np.split(data.queries, range(16, len(data.queries), 16))
            ]
        )
        latency: dict[str, list[float]] = {name: [] for name in indexes}
        recall: dict[str, list[float]] = {name: [] for name in indexes}
        for _ in range(5):  # warm-up
            for index in indexes.values():
                index.search(data.queries[:1], 10)
        for row, query in enumerate(data.queries):
            for name, index in indexes.items():
                started = time.perf_counter()
                found, _ = index.search(query[None], 10)
                latency[name].append(time.perf_counter() - started)
                recall[name].append(len(np.intersect1d(found[0], exact[row])) / 10)
        results: dict[str, dict[str, Any]] = {}
        for name, index in indexes.items():
            path = root / f"{name}.cfidx"
            started = time.perf_counter()
            index.watermark = 1
            index.save(path)
            save_s = time.perf_counter() - started
            started = time.perf_counter()
            options: dict[str, Any] = (
                {"uri": index.uri, "collection_prefix": "bench_"} if isinstance(index, MilvusIndex) else {}
            )
            type(index).load(path, model_id=MODEL, dim=dim, **options)
            load_s = time.perf_counter() - started
            started = time.perf_counter()
            index.purge(ids[:: max(1, faces // 5)][:5])
            purge_s = time.perf_counter() - started
            results[name] = {
                "insert_faces_per_s": round(faces / insert[name]),
                "search_p50_ms": _ms(latency[name], 0.5),
                "search_p95_ms": _ms(latency[name], 0.95),
                "recall_at_10": round(statistics.fmean(recall[name]), 4),
                "save_s": round(save_s, 3),
                "load_s": round(load_s, 3),
                "purge_5_s": round(purge_s, 3),
                "snapshot_bytes": path.stat().st_size,
            }
        results["faiss"]["store"] = faiss_index.backend
        results["faiss"]["hnsw_build_s"] = round(hnsw_build_s, 2) if faiss_index.backend == "hnsw" else None
        milvus_index = indexes["milvus"]
        assert isinstance(milvus_index, MilvusIndex)
        results["milvus"]["uri"] = "lite" if milvus_index.is_lite else milvus_index.uri
        if not milvus_index.is_lite:
            milvus_client(milvus_index.uri).drop_collection(milvus_index.collection)
    return {
        "faces": faces,
        "dim": dim,
        "queries": queries,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        **results,
        "milvus_search_vs_faiss": round(
            results["milvus"]["search_p50_ms"] / results["faiss"]["search_p50_ms"], 1
        ),
        "milvus_insert_vs_faiss": round(
            results["milvus"]["insert_faces_per_s"] / results["faiss"]["insert_faces_per_s"], 3
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--uri", default=None, help="a Milvus server (default: Milvus Lite in a scratch folder)"
    )
    parser.add_argument("--json", action="store_true", help="JSON only")
    args = parser.parse_args(argv)
    report = run_milvus_benchmark(args.faces, dim=args.dim, queries=args.queries, uri=args.uri)
    if args.json:
        print(json.dumps(report))
        return
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
