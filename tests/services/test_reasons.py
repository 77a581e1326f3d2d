"""Decisions with reasons on real photos (both back ends): margins, siblings and twins, unknown faces,
faces that fail the quality gate; the same rule for photos (/recognize, /verify) and video tracks.

Siblings are emulated by enrolling one person as two children: variations of the aligned Tom Hanks
portrait as child A, other variations as child B. A probe of that person then scores nearly the same
for both (within 0.01), which is what a sibling pair looks like to the rule.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import pytest
from sqlalchemy import select

from api.support import (  # noqa: F401 - the API tests' fixtures: real models, both databases
    Photos,
    jpeg,
    on_canvas,
    photos,
    pipeline,
    runtime,
)
from childface.db import Actor
from childface.db.models import ReviewItem
from childface.services import relations
from childface.services.children import create_child
from childface.services.enrollment import Photo, enroll_photos
from childface.services.photo_recognition import recognize_photo, verify_photo
from childface.services.runtime import Runtime
from childface.services.watch import vote

STAFF = Actor("user", "teacher")
PORTRAIT = 6  # photos.people[6]: the aligned Tom Hanks portrait


def _enroll(rt: Runtime, external_id: str, *data: bytes) -> int:
    child = create_child(db=rt.db, actor=STAFF, external_id=external_id, name=external_id)
    # the second child of one person is held back by the consistency check unless confirmed
    outcomes = enroll_photos(runtime=rt, actor=STAFF, child_id=child.id,
                             photos=[Photo(data=d) for d in data], confirm=True)
    assert [o.status for o in outcomes] == ["enrolled"] * len(data)
    return child.id


def _face(rt: Runtime, data: bytes, **options: object):  # noqa: ANN202
    (face,) = recognize_photo(runtime=rt, actor=STAFF, data=data, **options).faces
    return face


def _stored_reasons(rt: Runtime, review_id: int | None) -> list[str] | None:
    with rt.db.session() as session:
        return session.scalar(select(ReviewItem.reasons).where(ReviewItem.id == review_id))


@pytest.fixture
def tune(runtime: Runtime) -> Callable[..., None]:  # noqa: F811
    """tune(**values): the runtime decides with the test's settings changed by these values only."""
    base = runtime.settings

    def apply(**values: float) -> None:
        runtime.settings = base.model_copy(update=values)

    return apply


def test_one_person_as_two_children_small_margin_then_sibling_then_twin(
    runtime: Runtime, photos: Photos, tune: Callable[..., None]  # noqa: F811
) -> None:
    rt = runtime
    a = _enroll(rt, "A", photos.person(PORTRAIT, 0), photos.person(PORTRAIT, 1))
    b = _enroll(rt, "B", photos.person(PORTRAIT, 2), photos.person(PORTRAIT, 3))
    probe = photos.person(PORTRAIT, 5)

    # unrelated: the two are too close to call
    face = _face(rt, probe)
    scores = [c.score for c in face.candidates]
    assert [c.child_id for c in face.candidates][:2] in ([a, b], [b, a])
    assert scores[0] >= rt.settings.accept_threshold and scores[0] - scores[1] < rt.settings.match_margin
    assert face.decision == "review" and face.reasons == ["small_margin", "several_candidates"]
    assert _stored_reasons(rt, face.review_id) == face.reasons  # the review item keeps them

    # marked siblings: review with `sibling`, also when the margin alone would let it pass
    relations.set_relation(db=rt.db, actor=STAFF, child_id=a, other_id=b, kind="sibling")
    # (the close runner-up is the sibling: the sibling's margin applies to it, not match_margin)
    assert _face(rt, probe, queue_review=False).reasons == ["sibling", "several_candidates"]
    tune(match_margin=0.0)
    face = _face(rt, probe, queue_review=False)
    assert (face.decision, face.reasons) == ("review", ["sibling", "several_candidates"])
    tune(match_margin=0.0, sibling_margin=0.0)
    assert _face(rt, probe, queue_review=False).decision == "match"

    # twins: never a match unless the other twin trails by twin_margin
    relations.set_relation(db=rt.db, actor=STAFF, child_id=b, other_id=a, kind="twin")
    tune(match_margin=0.0, sibling_margin=0.0)
    face = _face(rt, probe, queue_review=False)
    assert (face.decision, face.reasons) == ("review", ["twin", "several_candidates"])
    # 1:1 against either twin asks the same question of the same rule
    verdict = verify_photo(runtime=rt, data=probe, child_id=a)
    assert (verdict.decision, verdict.reasons) == ("review", ["twin", "several_candidates"])
    # and so does a video track of this face
    gallery, settings = rt.current_gallery(), rt.settings
    track = vote(gallery, _embedding(rt, probe)[None, :], settings, rt.current_relations())
    assert (track.decision, track.reasons) == ("review", ["twin", "several_candidates"])
    assert vote(gallery, _embedding(rt, probe)[None, :], settings).decision == "match"  # without relations
    tune(match_margin=0.0, twin_margin=0.0)
    face = _face(rt, probe, queue_review=False)
    assert (face.decision, face.reasons) == ("match", [])
    assert face.candidates[0].child_id in (a, b)

    # unmarked: the pair is two unrelated children again (this process follows the feed)
    relations.remove_relation(db=rt.db, actor=STAFF, child_id=a, other_id=b)
    tune()
    assert _face(rt, probe, queue_review=False).reasons == ["small_margin", "several_candidates"]


def _embedding(rt: Runtime, data: bytes) -> np.ndarray:
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    (face,) = rt.pipeline.process([np.ascontiguousarray(rgb)])[0]
    return face.embedding


def test_a_relative_trailing_by_its_margin_is_no_obstacle(runtime: Runtime, photos: Photos) -> None:  # noqa: F811
    """A marked sibling far behind (another person) leaves a clear match alone; as a twin it does not."""
    rt = runtime
    a = _enroll(rt, "A", photos.person(PORTRAIT, 0))
    other = _enroll(rt, "C", photos.person(1, 0))
    relations.set_relation(db=rt.db, actor=STAFF, child_id=a, other_id=other, kind="sibling")
    face = _face(rt, photos.person(PORTRAIT, 5))
    lead = face.candidates[0].score - face.candidates[1].score
    assert rt.settings.sibling_margin <= lead < rt.settings.twin_margin  # another person, but alike
    assert (face.decision, face.reasons) == ("match", [])
    relations.set_relation(db=rt.db, actor=STAFF, child_id=a, other_id=other, kind="twin")
    face = _face(rt, photos.person(PORTRAIT, 5), queue_review=False)
    assert face.decision == "review" and face.reasons[0] == "twin"


def test_reasons_for_unknown_faces_and_faces_that_fail_the_quality_gate(
    runtime: Runtime, photos: Photos, tune: Callable[..., None]  # noqa: F811
) -> None:
    rt = runtime
    face = _face(rt, photos.astronaut)
    assert (face.decision, face.reasons) == ("unknown", ["no_templates"])  # nobody enrolled yet
    a = _enroll(rt, "A", photos.person(PORTRAIT, 0), photos.person(PORTRAIT, 1))
    tune(review_threshold=0.92)  # different people score up to 0.91 with these photos
    face = _face(rt, photos.astronaut)
    assert (face.decision, face.reasons) == ("unknown", ["below_review"])
    tune()

    # the portrait shrunk below the gate's face size: the score would match, the gate does not let it
    portrait = photos.people[PORTRAIT]
    tiny = jpeg(on_canvas(cv2.resize(portrait, (52, 52), interpolation=cv2.INTER_AREA)), quality=98)
    face = _face(rt, tiny)
    assert not face.face.quality.passed and "too_small" in face.face.quality.reasons
    assert face.candidates[0].score >= rt.settings.accept_threshold
    assert face.decision == "review" and face.review_queued
    assert face.reasons == [f"quality:{code}" for code in face.face.quality.reasons]
    assert _stored_reasons(rt, face.review_id) == face.reasons

    # the same face under a strict threshold: unknown, and still says why the face is unreliable
    tune(accept_threshold=0.9999, review_threshold=0.999)
    face = _face(rt, tiny, queue_review=False)
    assert face.decision == "unknown"
    assert face.reasons == ["below_review", *(f"quality:{c}" for c in face.face.quality.reasons)]
    # a blurred face against the child (1:1): not a match either, with the gate's reason
    tune()
    blurred = jpeg(cv2.GaussianBlur(portrait, (0, 0), 2.5), quality=98)
    verdict = verify_photo(runtime=rt, data=blurred, child_id=a)
    assert verdict.decision != "match" and "quality:blurred" in verdict.reasons


def test_a_review_below_accept_names_the_relative_too(
    runtime: Runtime, photos: Photos, tune: Callable[..., None]  # noqa: F811
) -> None:
    rt = runtime
    a = _enroll(rt, "A", photos.person(PORTRAIT, 0))
    b = _enroll(rt, "B", photos.person(PORTRAIT, 2))
    tune(accept_threshold=0.9999, match_margin=0.0)
    for kind in ("sibling", "twin"):
        relations.set_relation(db=rt.db, actor=STAFF, child_id=a, other_id=b, kind=kind)
        face = _face(rt, photos.person(PORTRAIT, 5), queue_review=False)
        assert (face.decision, face.reasons) == ("review", ["below_accept", kind, "several_candidates"])
