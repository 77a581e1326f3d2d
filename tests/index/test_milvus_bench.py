"""`python -m childface.bench.milvus` on a small gallery: both backends measured, the report complete."""

from __future__ import annotations

from childface.bench.milvus import run_milvus_benchmark


def test_benchmark_reports_both_backends() -> None:
    report = run_milvus_benchmark(300, dim=16, queries=10)
    assert report["faces"] == 300 and len(report["load_average_before"]) == 3
    for name in ("faiss", "milvus"):
        figures = report[name]
        assert figures["insert_faces_per_s"] > 0 and 0 < figures["search_p50_ms"] <= figures["search_p95_ms"]
        assert figures["recall_at_10"] == 1.0  # both exact at this size
    assert report["faiss"]["store"] == "flat" and report["milvus"]["uri"] == "lite"
    # the Milvus snapshot holds 300 ids and a header, FAISS's the vectors too
    assert report["milvus"]["snapshot_bytes"] < 300 * 8 + 2048 < report["faiss"]["snapshot_bytes"]
    assert report["milvus_search_vs_faiss"] > 0
