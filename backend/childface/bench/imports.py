"""`childface bench import`: photos per second of a real CSV import.

Builds N synthetic 640x480 one-face photos (sample_data.build_synthetic_dataset),
then imports them with the same `run_import` the CLI and the admin use, into a
throw-away SQLite database and media folder: dry-run planning, decoding,
detection, quality gate, embedding, media writes, DB commits, audit events and
index catch-up are all inside the timed span. Model loading and one warm-up
batch are not (a long-running server pays them once).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from childface.config import Settings
from childface.db.session import Actor
from childface.services import importing
from childface.services.runtime import Runtime
from childface.services.sample_data import build_synthetic_dataset


def run_import_benchmark(settings: Settings, *, n: int, batch_size: int, progress: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="childface-bench-import-") as tmp:
        root = Path(tmp)
        runtime = Runtime.scratch(settings, root)
        load_started = time.perf_counter()
        runtime.start()
        load_seconds = time.perf_counter() - load_started

        generated = time.perf_counter()
        csv_path = build_synthetic_dataset(root / "data", n, runtime.pipeline.detector)
        generate_seconds = time.perf_counter() - generated

        table = importing.read_table(csv_path.read_bytes())
        source = importing.FolderSource(csv_path.parent / "images", max_bytes=settings.max_upload_bytes)
        _warm_up(runtime, source, table, batch_size)

        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(table.rows), unit="photo", desc="bench import")

        def report_progress(p: importing.ImportProgress) -> None:
            if bar is not None:
                bar.n = p.done
                bar.refresh()

        try:
            result = importing.run_import(
                db=runtime.db, media=runtime.media, pipeline=runtime.pipeline,
                model_db_id=runtime.model_db_id, table=table, source=source,
                actor=Actor("system", "bench-import"), source_name=str(csv_path),
                max_pixels=settings.max_image_pixels, batch_size=batch_size, progress=report_progress,
                after_commit=runtime.catch_up,
            )
        finally:
            if bar is not None:
                bar.close()
            runtime.close()
        refusals: dict[str, int] = {}
        for outcome in result.outcomes:
            if outcome.status == "refused":
                refusals[outcome.reason] = refusals.get(outcome.reason, 0) + 1
        return {
            "photos": n,
            "device": str(runtime.pipeline.device),
            "gpu": torch.cuda.get_device_name(0) if str(runtime.pipeline.device).startswith("cuda") else None,
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "batch_size": batch_size,
            "import_seconds": round(result.seconds, 3),
            "photos_per_second": round(result.photos_per_second, 2),
            "imported": result.counts["imported"],
            "duplicate": result.counts["duplicate"],
            "refused": result.counts["refused"],
            "refusal_reasons": refusals,
            "children_created": result.counts["children_created"],
            "model_load_seconds": round(load_seconds, 2),
            "generate_seconds": round(generate_seconds, 2),
        }


def _warm_up(
    runtime: Runtime, source: importing.FolderSource, table: importing.ImportTable, size: int
) -> None:
    """One batch through the pipeline, untimed: first calls pay for kernels and allocator growth."""
    from childface.vision.decode import decode_image

    photos = [decode_image(source.read(row.image), max_pixels=runtime.settings.max_image_pixels)
              for row in table.rows[:size]]
    runtime.pipeline.process(photos)
