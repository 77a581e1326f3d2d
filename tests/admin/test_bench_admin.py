"""`childface bench admin` runs end to end on a small deployment (figures only: nothing is timed here)."""

from __future__ import annotations

from childface.bench.admin import DETAIL_FACES, run_admin_benchmark
from childface.config import Settings

PAGES = {
    "children_page_cold", "children_page_warm", "children_page_sorted_by_faces", "children_api_request",
    "children_api_request_by_faces", "child_detail_cold", "child_detail_warm",
    "old_children_page_api_calls",
}


def test_bench_admin_builds_a_deployment_and_reports_every_page() -> None:
    settings = Settings(_env_file=None, device="cpu")
    report = run_admin_benchmark(settings, children=30, faces_per_child=2, repeat=1)
    assert report["children"] == 31 and report["detail_child_faces"] == DETAIL_FACES
    assert set(report["seconds"]) == PAGES
    assert all(figures["median"] > 0 for figures in report["seconds"].values())
    assert len(report["load_average_before"]) == len(report["load_average_after"]) == 3
