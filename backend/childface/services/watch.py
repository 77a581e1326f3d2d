"""Live recognition on video: frames -> faces -> tracks -> one decision per track -> sightings.

One `Watcher` runs any number of sources (`vision.video.VideoSource`) in one
loop, so the models are loaded once and every model call is batched across
sources:

1. take the newest frame of each source;
2. detect faces (`FacePipeline.detect_only`: detector, alignment, quality gate)
   on the frames due for detection: every `stride`-th frame of a source, in one
   batch; the tracker's Kalman prediction carries the boxes through the others;
3. track (`vision.tracking.FaceTracker`, one per source);
4. embed, in one batch, only the faces worth it: a confirmed track's face that
   passed the quality gate, at most every `embed_every` frames of that track;
   once the track holds `votes` embeddings, only a face better
   (`QualityReport.score`: size, sharpness, pose, detector score) than its best
   so far, which then replaces the worst it holds;
5. vote: each of the track's best embeddings gets child-level scores from the
   gallery (`Runtime.current_gallery`), their mean per child is the track's
   score, and `services.recognition.judge` turns the ranked means into match /
   review / unknown with its reasons: the API's rule, thresholds, and marked
   siblings and twins (`Runtime.current_relations`);
6. report (`services.sightings.record_track`) when a track's decision or child
   changes, and once more, final, when it ends. A track that never showed a face
   that passed the quality gate is never reported (nothing to decide on).

Restart safety: track ids are "<run uuid>-<tracker id>", unique per run, and
nothing in memory is needed for correctness: a killed watcher's tracks stay
non-final, and the database's one-arrival-per-child-per-day constraint keeps a
restarted one from recording a second arrival.

Camera status: every `heartbeat_s` (and at once when a source's state changes)
each source's state, frames/s and faces/s go to `update_camera_status`; when
staff asked for a frame, the latest frame, annotated with the tracks, is handed
to `store_frame`. No other frame is ever stored.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import torch
from sqlalchemy import select

from childface.config import Settings
from childface.db.models import Child
from childface.db.session import Database
from childface.services.cameras import store_frame, update_camera_status
from childface.services.recognition import NO_TEMPLATES, ChildSearch, Kin, judge
from childface.services.runtime import Runtime
from childface.services.sightings import TrackReport, record_track
from childface.vision.pipeline import DetectedFace, FacePipeline
from childface.vision.quality import QualityReport
from childface.vision.tracking import FaceTracker, Track, TrackerConfig
from childface.vision.video import Frame, SourceSpec, VideoSource

log = logging.getLogger(__name__)

#: the loop's wait for a frame when no source had one
_IDLE_WAIT_S = 0.005
#: a failed report is tried again this many times (the database may be away for a moment)
_REPORT_RETRIES = 5
#: the loop's stages, timed in `WatchSummary.seconds`
STAGES = ("detect", "track", "embed", "vote", "record")
#: BGR box colours of the annotated frame, by decision (None: not decided yet)
_COLOURS = {"match": (80, 200, 60), "review": (0, 190, 255), "unknown": (40, 40, 230), None: (200, 200, 200)}


@dataclass(frozen=True)
class WatchOptions:
    #: detect faces on every N-th frame of a source; the tracker predicts the boxes in between
    stride: int = 3
    #: a track's face is embedded at most every K frames (of that source)
    embed_every: int = 5
    #: best-quality embeddings a track keeps and votes with
    votes: int = 3
    #: seconds between camera status heartbeats
    heartbeat_s: float = 2.0
    #: touched at every heartbeat: a container's health check reads its age
    health_file: Path | None = None
    tracker: TrackerConfig = field(default_factory=TrackerConfig)

    def __post_init__(self) -> None:
        for name in ("stride", "embed_every", "votes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


@dataclass
class Evidence:
    """One embedded face of a track."""

    quality: QualityReport
    embedding: np.ndarray
    chip: np.ndarray
    #: the embedding model: after a `switch-model` a track votes only with the new model's faces
    model_id: str = ""


@dataclass
class TrackIdentity:
    """What one track knows: when it was seen, its best faces, and its current decision."""

    track_id: str
    first_seen: datetime
    last_seen: datetime
    frames: int = 0
    evidence: list[Evidence] = field(default_factory=list)  # best quality first
    last_embedded: int | None = None  # source frame index of the last embedding
    decision: str | None = None
    child_id: int | None = None
    score: float | None = None
    candidates: list[tuple[int, float]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    reported: tuple[str, int | None] | None = None

    def wants(self, face: DetectedFace, frame_index: int, options: WatchOptions) -> bool:
        """Embed this face? A gate-passing face, at most every `embed_every` frames: while the track has
        fewer than `votes` embeddings any such face, after that only one better than its best so far."""
        if not face.quality.passed:
            return False
        if self.last_embedded is not None and frame_index - self.last_embedded < options.embed_every:
            return False
        return len(self.evidence) < options.votes or face.quality.score > self.evidence[0].quality.score

    def add(self, evidence: Evidence, options: WatchOptions) -> None:
        self.evidence = [e for e in self.evidence if e.model_id == evidence.model_id]
        self.evidence.append(evidence)
        self.evidence.sort(key=lambda e: -e.quality.score)
        del self.evidence[options.votes :]

    def report(self, source: str, *, final: bool) -> TrackReport:
        assert self.decision is not None
        best = self.evidence[0] if self.evidence else None
        return TrackReport(
            source=source,
            track_id=self.track_id,
            decision=self.decision,
            child_id=self.child_id,
            score=self.score,
            candidates=list(self.candidates),
            first_seen=self.first_seen,
            last_seen=self.last_seen,
            frames=self.frames,
            best_chip=None if best is None else best.chip,
            best_embedding=None if best is None else best.embedding,
            final=final,
            best_quality=None if best is None else best.quality,
            reasons=list(self.reasons),
        )


@dataclass(frozen=True)
class Vote:
    decision: str
    child_id: int | None  # the matched child, or the leading candidate of a review
    score: float | None
    candidates: list[tuple[int, float]]
    reasons: list[str] = field(default_factory=list)


def _mean_scores(gallery: ChildSearch, vectors: np.ndarray, children: list[int]) -> dict[int, float]:
    """Per child, the mean child-level score over the vectors (children without templates left out)."""
    totals: dict[int, list[float]] = {c: [] for c in children}
    for vector in vectors:
        for candidate in gallery.child_scores(vector, children):
            totals[candidate.child_id].append(candidate.score)
    return {child: float(np.mean(s)) for child, s in totals.items() if s and len(s) == len(vectors)}


def vote(gallery: ChildSearch, embeddings: np.ndarray, settings: Settings, kin: Kin | None = None) -> Vote:
    """A track's decision from its best embeddings: mean child-level score per child over the
    embeddings, then the API's rule (`judge`: margins, marked siblings and twins in `kin`)."""
    vectors = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
    k = max(2, settings.top_k)
    children = sorted({c.child_id for found in gallery.search(vectors, k) for c in found})
    if not children:
        return Vote("unknown", None, None, [], [NO_TEMPLATES])
    means = sorted(_mean_scores(gallery, vectors, children).items(), key=lambda item: -item[1])
    if not means:
        return Vote("unknown", None, None, [], [NO_TEMPLATES])
    ruling = judge(
        means, settings, kin=kin, score_missing=lambda missing: _mean_scores(gallery, vectors, missing)
    )
    best_child, best = means[0]
    decision = ruling.decision
    return Vote(decision, None if decision == "unknown" else best_child, best, means[:k], ruling.reasons)


@dataclass
class _Rate:
    """Events per second over the last heartbeat interval."""

    count: int = 0
    since: float = field(default_factory=time.monotonic)

    def take(self) -> float:
        now = time.monotonic()
        rate = self.count / max(now - self.since, 1e-6)
        self.count, self.since = 0, now
        return rate


class _SourceState:
    def __init__(self, spec: SourceSpec, source: VideoSource, options: WatchOptions) -> None:
        self.spec = spec
        self.source = source
        self.tracker = FaceTracker(options.tracker)
        self.identities: dict[int, TrackIdentity] = {}
        self.frames_seen = 0
        self.latest: Frame | None = None
        self.fps = _Rate()
        self.faces = _Rate()
        self.reported_state: str | None = None
        self.last_heartbeat = 0.0


FrameObserver = Callable[[str, Frame, list[tuple[str, tuple[float, float, float, float]]]], None]


@dataclass
class WatchSummary:
    frames: int = 0
    faces: int = 0
    embedded: int = 0
    tracks: int = 0  # tracks reported (had at least one usable face)
    events: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # per stage


class Watcher:
    """Runs sources until they end or `stop()` is called; see the module docstring."""

    def __init__(
        self,
        runtime: Runtime,
        specs: Sequence[SourceSpec],
        options: WatchOptions | None = None,
        *,
        sources: Sequence[VideoSource] | None = None,
        observer: FrameObserver | None = None,
        status: bool = True,
    ) -> None:
        if not specs:
            raise ValueError("watch needs at least one source")
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"source names must differ: {names}")
        self.runtime = runtime
        self.options = options or WatchOptions()
        self.run_id = uuid.uuid4().hex[:12]
        made = sources if sources is not None else [VideoSource(spec) for spec in specs]
        self._sources = [_SourceState(spec, src, self.options) for spec, src in zip(specs, made, strict=True)]
        self._observer = observer
        self._status = status
        self._stop = threading.Event()
        self._retry: list[tuple[TrackReport, int]] = []
        self._touched = float("-inf")
        self.summary = WatchSummary(seconds=dict.fromkeys(STAGES, 0.0))

    def stop(self) -> None:
        self._stop.set()

    @property
    def failed(self) -> list[str]:
        """The sources that ended in error, as "name: reason"."""
        return [f"{s.spec.name}: {s.source.error}" for s in self._sources if s.source.state == "error"]

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> WatchSummary:
        self.runtime.current_gallery()  # load the models and the index before the first frame
        for state in self._sources:
            self._heartbeat(state, force=True)
            state.source.start()
        try:
            while not self._stop.is_set():
                batch = self._take_frames()
                if not batch:
                    if all(s.source.ended for s in self._sources):
                        break
                    self._heartbeats()
                    self._stop.wait(_IDLE_WAIT_S)
                    continue
                # the served model's pipeline, taken per batch: after a model switch the batch's
                # embeddings and the gallery they are searched in are of one model (Runtime.pipeline)
                self._step(self.runtime.pipeline, batch)
                self._heartbeats()
        finally:
            for state in self._sources:
                state.source.stop()
                self._end_tracks(state, state.tracker.end_all())
            self._retry_reports(final_pass=True)
            for state in self._sources:
                ended = "error" if state.source.state == "error" else "stopped"
                self._heartbeat(state, force=True, state_override=ended)
        return self.summary

    def _take_frames(self) -> list[tuple[_SourceState, Frame]]:
        batch = []
        for state in self._sources:
            if state.source.ended:
                continue
            frame = state.source.read()
            if frame is None and (state.source.ended or state.source.state == "reconnecting"):
                # the file ended, the source failed, or the stream dropped: whoever comes back after a
                # reconnection is a new track (a stale prediction must not pick them up)
                self._end_tracks(state, state.tracker.end_all())
                continue
            if frame is not None:
                batch.append((state, frame))
        return batch

    def _step(self, pipeline: FacePipeline, batch: list[tuple[_SourceState, Frame]]) -> None:
        stride = self.options.stride
        due = [(state, frame) for state, frame in batch if state.frames_seen % stride == 0]
        started = time.perf_counter()
        detected = pipeline.detect_only([frame.rgb for _, frame in due]) if due else []
        self.summary.seconds["detect"] += time.perf_counter() - started
        faces_of = {id(state): faces for (state, _), faces in zip(due, detected, strict=True)}

        started, recorded = time.perf_counter(), self.summary.seconds["record"]
        wanted: list[tuple[_SourceState, TrackIdentity, DetectedFace]] = []
        for state, frame in batch:
            if state.tracker.frame_size is None:
                state.tracker.frame_size = (frame.rgb.shape[1], frame.rgb.shape[0])
            self._end_tracks(state, state.tracker.predict())
            faces = faces_of.get(id(state))
            if faces is not None:
                state.tracker.update(np.array([f.box for f in faces], dtype=np.float64).reshape(-1, 4))
                state.faces.count += len(faces)
                self.summary.faces += len(faces)
            wanted += self._follow(state, frame, faces)
            state.frames_seen += 1
            state.latest = frame
            state.fps.count += 1
            self.summary.frames += 1
        # tracks that ended were recorded on the way: that time is the record stage's
        recording = self.summary.seconds["record"] - recorded
        self.summary.seconds["track"] += time.perf_counter() - started - recording

        if wanted:
            self._embed_and_vote(pipeline, wanted)

    def _follow(
        self, state: _SourceState, frame: Frame, faces: list[DetectedFace] | None
    ) -> list[tuple[_SourceState, TrackIdentity, DetectedFace]]:
        """Update each live track's identity record; the faces worth embedding now."""
        wanted = []
        alive = set()
        for track in state.tracker.tracks:
            alive.add(track.id)
            identity = state.identities.get(track.id)
            if identity is None:
                if track.detection is None:
                    continue
                identity = TrackIdentity(f"{self.run_id}-{track.id}", frame.at, frame.at)
                state.identities[track.id] = identity
            if track.detection is not None:
                identity.last_seen = frame.at
            identity.frames += 1
            if track.confirmed and faces is not None and track.detection is not None:
                face = faces[track.detection]
                if identity.wants(face, frame.index, self.options):
                    identity.last_embedded = frame.index
                    wanted.append((state, identity, face))
        for gone in set(state.identities) - alive:
            state.identities.pop(gone)  # tentative tracks that never confirmed
        if self._observer is not None:
            shown = [(state.identities[t.id].track_id, t.box) for t in state.tracker.active
                     if t.id in state.identities]
            self._observer(state.spec.name, frame, shown)
        return wanted

    def _embed_and_vote(
        self, pipeline: FacePipeline, wanted: list[tuple[_SourceState, TrackIdentity, DetectedFace]]
    ) -> None:
        started = time.perf_counter()
        chips = np.stack([face.chip for _, _, face in wanted])
        with torch.inference_mode():
            tensor = torch.from_numpy(chips).permute(0, 3, 1, 2).to(pipeline.device)
            vectors = pipeline.embedder.embed(tensor).float().cpu().numpy()
        self.summary.embedded += len(wanted)
        for (_, identity, face), vector in zip(wanted, vectors, strict=True):
            identity.add(Evidence(face.quality, vector, face.chip, pipeline.model_id), self.options)
        self.summary.seconds["embed"] += time.perf_counter() - started

        started = time.perf_counter()
        gallery = self.runtime.current_gallery()
        settings, kin = self.runtime.settings, self.runtime.current_relations()
        changed = []
        for state, identity in {id(i): (s, i) for s, i, _ in wanted}.values():
            evidence = [e.embedding for e in identity.evidence if e.model_id == gallery.model_key]
            if not evidence:  # the model was switched since these faces were embedded
                continue
            result = vote(gallery, np.stack(evidence), settings, kin)
            identity.decision, identity.child_id = result.decision, result.child_id
            identity.score, identity.candidates = result.score, result.candidates
            identity.reasons = result.reasons
            if identity.reported != (result.decision, result.child_id):
                changed.append((state, identity))
        self.summary.seconds["vote"] += time.perf_counter() - started
        for state, identity in changed:
            if self._record(identity.report(state.spec.name, final=False)):
                identity.reported = (identity.decision, identity.child_id)  # type: ignore[assignment]

    def _end_tracks(self, state: _SourceState, ended: list[Track]) -> None:
        for track in ended:
            identity = state.identities.pop(track.id, None)
            if identity is None or identity.decision is None:
                continue  # never a usable face: nothing to report
            self.summary.tracks += 1
            self._record(identity.report(state.spec.name, final=True))

    def _record(self, report: TrackReport) -> bool:
        started = time.perf_counter()
        try:
            events = record_track(self.runtime, report)
        except Exception:  # noqa: BLE001 - the database may be away: keep watching, try again later
            log.warning("could not record track %s/%s; will retry", report.source, report.track_id,
                        exc_info=True)
            if report.final:
                self._retry.append((report, 0))
            return False
        finally:
            self.summary.seconds["record"] += time.perf_counter() - started
        for event in events:
            self.summary.events[event] = self.summary.events.get(event, 0) + 1
            log.info("%s: %s (track %s, child %s, score %s)", report.source, event, report.track_id,
                     report.child_id, None if report.score is None else round(report.score, 3))
        return True

    def _retry_reports(self, *, final_pass: bool = False) -> None:
        pending, self._retry = self._retry, []
        for report, tries in pending:
            try:
                events = record_track(self.runtime, report)
            except Exception:  # noqa: BLE001 - still away
                if tries + 1 < _REPORT_RETRIES and not final_pass:
                    self._retry.append((report, tries + 1))
                else:
                    log.error("giving up on track %s/%s", report.source, report.track_id)
                continue
            for event in events:
                self.summary.events[event] = self.summary.events.get(event, 0) + 1

    # ---- camera status -----------------------------------------------------------------------------

    def _heartbeats(self) -> None:
        for state in self._sources:
            self._heartbeat(state)
        health = self.options.health_file
        now = time.monotonic()
        if health is not None and now - self._touched >= self.options.heartbeat_s:
            try:
                health.touch()
                self._touched = now
            except OSError as exc:
                log.warning("cannot touch the health file %s: %s", health, exc)

    def _heartbeat(
        self, state: _SourceState, *, force: bool = False, state_override: str | None = None
    ) -> None:
        if not self._status:
            return
        now = time.monotonic()
        current = state_override or state.source.state
        due = now - state.last_heartbeat >= self.options.heartbeat_s
        if not force and not due and current == state.reported_state:
            return
        if self._retry:
            self._retry_reports()
        fps, faces = state.fps.take(), state.faces.take()
        try:
            wanted = update_camera_status(
                self.runtime.db, state.spec.name, uri_kind=state.spec.kind, state=current,
                fps=round(fps, 2), faces_per_s=round(faces, 2), error=state.source.error,
            )
            if wanted and state.latest is not None:
                shown = {i.child_id for i in state.identities.values() if i.child_id is not None}
                store_frame(self.runtime.db, state.spec.name, annotate(state, _names(self.runtime.db, shown)))
        except Exception:  # noqa: BLE001 - status is best effort; the video goes on
            log.warning("camera status for %s not written", state.spec.name, exc_info=True)
            return
        state.reported_state, state.last_heartbeat = current, now


def _names(db: Database, child_ids: set[int]) -> dict[int, str]:
    if not child_ids:
        return {}
    with db.session() as session:
        rows = session.execute(select(Child.id, Child.display_name).where(Child.id.in_(child_ids)))
        return {child_id: name for child_id, name in rows}


def annotate(state: _SourceState, names: dict[int, str]) -> bytes:
    """The latest frame as JPEG with each live track's box, decision and child's name (on request only)."""
    assert state.latest is not None
    canvas = cv2.cvtColor(state.latest.rgb, cv2.COLOR_RGB2BGR)
    colours = _COLOURS
    for track in state.tracker.active:
        identity = state.identities.get(track.id)
        decision = None if identity is None else identity.decision
        x1, y1, x2, y2 = (int(round(v)) for v in track.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colours[decision], 2, cv2.LINE_AA)
        label = f"#{track.id} {decision or '...'}"
        if identity is not None and identity.child_id is not None:
            label += f" {names.get(identity.child_id, identity.child_id)} {identity.score:.2f}"
        cv2.putText(canvas, label, (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colours[decision], 1)
    ok, jpeg = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, 80])
    if not ok:
        raise ValueError("could not encode the frame")
    return jpeg.tobytes()
