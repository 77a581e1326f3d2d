"""`childface bench search` runs end to end on a small gallery and reports the agreed keys."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from childface.bench.search import exact_top_k, face_like_data, gallery_sizes
from childface.cli import app

KEYS = {
    "n",
    "dim",
    "index",
    "recall_at_1",
    "recall_at_10",
    "identity_recall_at_1",
    "p50_ms",
    "p99_ms",
    "speedup_vs_numpy",
    "build_s",
    "throughput_qps",
}


def test_face_like_data_has_face_geometry():
    data = face_like_data(2000, 128, n_queries=200, seed=3)
    sims = data.queries @ data.gallery.T
    same = sims[data.query_labels[:, None] == data.labels[None, :]]
    other = sims[data.query_labels[:, None] != data.labels[None, :]]
    assert 0.93 < same.mean() < 0.97 and 0.6 < other.mean() < 0.8
    assert same.min() > other.max(), "a clear gap between same person and other people"
    top = exact_top_k(data.gallery, data.queries, 5)
    assert (data.labels[top[:, 0]] == data.query_labels).all()
    assert np.allclose(np.linalg.norm(data.gallery, axis=1), 1, atol=1e-5)


def test_gallery_sizes():
    assert gallery_sizes(2000) == [2000]
    assert gallery_sizes(100_000) == [10_000, 100_000]
    assert gallery_sizes(250_000) == [10_000, 100_000, 250_000]


def test_bench_search_cli_json():
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "search",
            "--n",
            "2000",
            "--queries",
            "100",
            "--ef-search",
            "16",
            "--ef-search",
            "64",
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["results"]
    assert [row["index"].split(",")[-1] for row in rows] == ["ef=16)", "ef=64)"]
    assert all(row["index"].startswith("faiss-hnsw(") for row in rows)
    for row in rows:
        assert row.keys() >= KEYS
        assert row["n"] == 2000 and row["dim"] == 128
        assert 0.9 <= row["recall_at_1"] <= 1.0 and row["identity_recall_at_1"] >= 0.95
        assert 0 < row["p50_ms"] <= row["p99_ms"] and row["speedup_vs_numpy"] > 0
