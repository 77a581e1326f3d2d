"""Face tracks from real photos, for the video-event tests (services and API).

A photo of a person goes through the real face pipeline, the runtime's
gallery and the API's decision rule; the result is reported the way
`childface watch` reports a track.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from childface.services.recognition import identify
from childface.services.runtime import Runtime
from childface.services.sightings import TrackReport
from childface.vision.pipeline import DetectedFace

T0 = datetime(2026, 11, 26, 7, 30, tzinfo=UTC)
#: each photo's face, found once per test session (the pipeline is deterministic and session-wide)
_FACES: dict[str, DetectedFace] = {}


def face_of(rt: Runtime, photo: bytes) -> DetectedFace:
    key = hashlib.sha256(photo).hexdigest()
    if key not in _FACES:
        (_FACES[key],) = rt.pipeline.process([rt.pipeline.decode(photo)])[0]
    return _FACES[key]


def track(rt: Runtime, photo: bytes, *, track_id: str, final: bool = True, source: str = "front-door",
          at: datetime = T0) -> TrackReport:
    """A one-face track of `photo`'s face, decided like /recognize decides."""
    face = face_of(rt, photo)
    (ident,) = identify(rt.current_gallery(), face.embedding[None, :], rt.settings)
    return TrackReport(
        source=source, track_id=track_id, decision=ident.decision,
        child_id=ident.child_id if ident.decision == "match" else None,
        score=ident.score, candidates=[(c.child_id, c.score) for c in ident.candidates],
        first_seen=at, last_seen=at + timedelta(seconds=3), frames=40,
        best_chip=face.chip, best_embedding=face.embedding, final=final, best_quality=face.quality,
    )
