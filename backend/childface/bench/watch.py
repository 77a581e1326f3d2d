"""`childface bench watch`: live recognition's frames/s against recognising every face in every frame.

Setup: a scratch database and media folder; three people of the synthetic clip
(bench/clips.py) enrolled from their photos through the enrollment service;
the clip written at the asked size (or a clip of yours, without ground truth).

Measured, interleaved round by round so a change in the machine's load touches
both alike:

- tracked: `services.watch.Watcher` on the clip as a file source, as
  `childface watch` runs it (decode, detection every `stride`-th frame, tracker,
  embeddings by the quality policy, vote, sightings and arrivals written);
- naive: the same frames decoded the same way, every frame through the full
  pipeline (`FacePipeline.process`: detect and embed every face) and every face
  decided with `services.recognition.identify`, no tracker, nothing written.

With `streams` > 1 the tracked run watches that many copies of the clip at
once, as separate sources in one process (their frames batched together), and
`fps` is per stream; the naive baseline has no batching across streams, so its
per-stream figure is its one-stream figure divided by the number of streams.

Reported: `fps` and `naive_fps` (median over the rounds), their ratio,
`faces_per_s` (detected faces per second of the tracked run), the tracked run's
seconds per stage, and against the clip's truth: `people`, `tracks`,
`identity_switches`, `arrivals` (rows in the scratch database: one per enrolled
person seen), with `os.getloadavg()` before and after.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from childface.bench.clips import DEFAULT_CAST, Clip, build_clip, clip_people, score_tracks
from childface.config import Settings

#: the cast members the benchmark enrolls (the rest are strangers)
ENROLLED = DEFAULT_CAST[:3]


def _enroll(runtime: Any, people: dict) -> None:  # noqa: ANN401 - Runtime, dict[str, Person]
    from childface.db import Actor
    from childface.services.children import create_child
    from childface.services.enrollment import Photo, enroll_photos

    actor = Actor("system", "bench")
    for name in ENROLLED:
        person = people[name]
        child = create_child(db=runtime.db, actor=actor, external_id=name, name=name)
        jpeg = cv2.imencode(".jpg", np.ascontiguousarray(person.photo[:, :, ::-1]))[1].tobytes()
        enroll_photos(runtime=runtime, actor=actor, child_id=child.id,
                      photos=[Photo(data=jpeg, hint_box=person.photo_box)])


def _read_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        capture.release()
    return frames


def _naive(runtime: Any, path: Path) -> tuple[float, int]:  # noqa: ANN401 - Runtime
    """Every face of every frame recognised: (frames/s, faces)."""
    from childface.services.recognition import identify

    pipeline, settings = runtime.pipeline, runtime.settings
    started = time.perf_counter()
    faces = 0
    capture = cv2.VideoCapture(str(path))
    frames = 0
    try:
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            found = pipeline.process([cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)])[0]
            frames += 1
            faces += len(found)
            if found:
                identify(runtime.current_gallery(), np.stack([f.embedding for f in found]), settings)
    finally:
        capture.release()
    return frames / (time.perf_counter() - started), faces


def run_watch_benchmark(
    settings: Settings,
    *,
    clip_path: Path | None = None,
    size: tuple[int, int] = (640, 480),
    stride: int = 3,
    rounds: int = 2,
    naive: bool = True,
    streams: int = 1,
) -> dict[str, Any]:
    """Build (or take) the clip, enroll, then `rounds` x (tracked run, naive run): see the module's doc."""
    from childface.services.runtime import Runtime
    from childface.services.watch import Watcher, WatchOptions
    from childface.vision.video import SourceSpec

    with tempfile.TemporaryDirectory(prefix="childface-bench-watch-") as scratch:
        root = Path(scratch)
        runtime = Runtime.scratch(settings, root)
        try:
            people = clip_people(runtime.pipeline)
            _enroll(runtime, people)
            clip: Clip | None = None
            if clip_path is None:
                clip = build_clip(people, root / "clip.avi", width=size[0], height=size[1])
                clip_path = clip.path
            frames = _read_frames(clip_path)
            if not frames:
                raise ValueError(f"no frames in {clip_path}")
            height, width = frames[0].shape[:2]
            runtime.current_gallery()
            runtime.pipeline.process([frames[0]])  # warm-up: first calls allocate
            load_before = os.getloadavg()
            fps, naive_fps, first = [], [], None
            for n in range(rounds):
                seen: list[list] = []
                sources = [SourceSpec.parse(str(clip_path), name=f"bench-{n}-{i}") for i in range(streams)]
                watcher = Watcher(
                    runtime, sources, WatchOptions(stride=stride),
                    observer=lambda name, _frame, tracks, seen=seen, first=sources[0].name: (
                        seen.append(tracks) if name == first else None
                    ),
                )
                started = time.perf_counter()
                summary = watcher.run()
                elapsed = time.perf_counter() - started
                fps.append(summary.frames / streams / elapsed)
                if first is None:
                    first = (summary, elapsed, seen)
                if naive:
                    naive_fps.append(_naive(runtime, clip_path)[0] / streams)
            load_after = os.getloadavg()
            assert first is not None
            summary, elapsed, seen = first
            with runtime.db.session() as session:
                from sqlalchemy import func, select

                from childface.db.models import Arrival

                arrivals = session.scalar(select(func.count()).select_from(Arrival))
            stages = {k: round(v, 3) for k, v in summary.seconds.items()}
            stages["other"] = round(elapsed - sum(summary.seconds.values()), 3)
            tracked, baseline = statistics.median(fps), statistics.median(naive_fps) if naive_fps else None
            report: dict[str, Any] = {
                "fps": round(tracked, 2),
                "naive_fps": None if baseline is None else round(baseline, 2),
                "speedup": None if baseline is None else round(tracked / baseline, 2),
                "width": width,
                "height": height,
                "frames": summary.frames,
                "streams": streams,
                "stride": stride,
                "faces_per_s": round(summary.faces / elapsed, 2),
                "embedded_faces": summary.embedded,
                "tracks": summary.tracks,
                "people": None,
                "identity_switches": None,
                "arrivals": arrivals,
                "events": summary.events,
                "stage_seconds": stages,
                "rounds": rounds,
                "fps_each_round": [round(v, 2) for v in fps],
                "naive_fps_each_round": [round(v, 2) for v in naive_fps],
                "device": settings.resolved_device,
                "torch_threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "load_average_before": [round(v, 2) for v in load_before],
                "load_average_after": [round(v, 2) for v in load_after],
            }
            if clip is not None:
                score = score_tracks(clip.truth, seen)
                report.update(
                    people=score.people, tracks=score.tracks, identity_switches=score.identity_switches,
                    enrolled_people=len(ENROLLED),
                )
            return report
        finally:
            runtime.close()


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"bench watch: {report['streams']} x {report['width']}x{report['height']}, "
        f"{report['frames']} frames, "
        f"stride {report['stride']}, {report['device']} "
        f"({report['torch_threads']} torch threads, {report['cpu_count']} CPUs)",
        f"  tracked: {report['fps']} frames/s per stream ({report['faces_per_s']} faces/s, "
        f"{report['embedded_faces']} faces embedded)",
    ]
    if report["naive_fps"] is not None:
        lines.append(f"  naive (every face of every frame): {report['naive_fps']} frames/s "
                     f"-> {report['speedup']}x")
    lines.append(f"  people {report['people']}, tracks {report['tracks']}, identity switches "
                 f"{report['identity_switches']}, arrivals {report['arrivals']}")
    lines.append("  seconds per stage: " + ", ".join(f"{k} {v}" for k, v in report["stage_seconds"].items()))
    lines.append(
        f"  load average before {report['load_average_before']}, after {report['load_average_after']}"
    )
    return "\n".join(lines)
