"""The template policy: which faces become templates, the per-child cap and retired templates.

The decision itself (`template_verdict`) is checked case by case; the paths
that act on it run on real photos through the real pipeline, gallery and
review queue, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select, update

from api.support import (  # noqa: F401 - the API tests' fixtures: real models, both databases
    Photos,
    jpeg,
    photos,
    pipeline,
    runtime,
)
from childface.config import Settings
from childface.db import Actor
from childface.db.models import AuditEvent, ChildStatus, Face, Image, ImageSource, ReviewState
from childface.services import relations, review, templates
from childface.services.children import create_child, set_child_status
from childface.services.enrollment import Photo, enroll_photos
from childface.services.photo_recognition import recognize_photo
from childface.services.runtime import Runtime
from childface.services.templates import template_verdict

STAFF = Actor("user", "teacher")
DOOR = Actor("api_key", "door")
#: recognition leaves every face to a person: the review path
TOO_STRICT = {"accept_threshold": 0.9999, "review_threshold": 0.5}
#: variations of one photo score 0.98 or more: the near-duplicate check would refuse them all
LOOSE_DUPLICATES = {"auto_template_max_similarity": 0.9999}


# ---- the decision ------------------------------------------------------------------------------------


def test_the_verdict_refuses_each_case_and_accepts_the_rest() -> None:
    base = Settings(_env_file=None, accept_threshold=0.94, auto_templates="confident")

    def verdict(settings: Settings = base, **changes: object) -> tuple[bool, str]:
        facts: dict = {"confirmed": False, "score": 0.97, "margin": 0.2, "quality_ok": True,
                       "best_similarity_to_child_templates": 0.95, "settings": settings}
        return template_verdict(**{**facts, **changes})

    assert verdict() == (True, "ok")
    assert verdict(confirmed=True, score=None, margin=None) == (True, "ok")
    assert verdict(best_similarity_to_child_templates=None) == (True, "ok")  # a child's first template
    assert verdict(margin=None) == (True, "ok")  # nobody else to confuse it with
    assert verdict(score=0.959) == (False, "low_score")  # under accept + auto_template_min_excess (0.96)
    assert verdict(score=None) == (False, "low_score")
    assert verdict(margin=0.049) == (False, "small_margin")
    assert verdict(quality_ok=False) == (False, "low_quality")
    assert verdict(confirmed=True, quality_ok=False) == (False, "low_quality")
    assert verdict(best_similarity_to_child_templates=0.971) == (False, "near_duplicate")
    assert verdict(confirmed=True, best_similarity_to_child_templates=0.99) == (False, "near_duplicate")
    assert verdict(child_active=False) == (False, "child_not_active")
    # a sibling within sibling_margin (0.05), a twin within twin_margin (0.15)
    assert verdict(relatives=[("sibling", 0.04)]) == (False, "sibling_close")
    assert verdict(relatives=[("sibling", 0.06)]) == (True, "ok")
    assert verdict(relatives=[("twin", 0.14)]) == (False, "sibling_close")
    assert verdict(confirmed=True, relatives=[("sibling", 0.06), ("twin", 0.1)]) == (False, "sibling_close")
    confirmed_only = base.model_copy(update={"auto_templates": "confirmed"})
    assert verdict(confirmed_only) == (False, "needs_confirmation")
    assert verdict(confirmed_only, confirmed=True) == (True, "ok")
    off = base.model_copy(update={"auto_templates": "off"})
    assert verdict(off, confirmed=True) == (False, "auto_templates_off")


# ---- helpers -----------------------------------------------------------------------------------------


def child_with(rt: Runtime, name: str, *photos_: bytes, group: str | None = None) -> int:
    child = create_child(db=rt.db, actor=STAFF, external_id=name.upper(), name=name, group=group)
    if photos_:
        outcomes = enroll_photos(runtime=rt, actor=STAFF, child_id=child.id,
                                 photos=[Photo(data=p) for p in photos_], confirm=True)
        assert [o.status for o in outcomes] == ["enrolled"] * len(photos_), [o.reasons for o in outcomes]
    rt.catch_up()
    return child.id


def queued(rt: Runtime, photo: bytes) -> int:
    """The review item a recognition of `photo` opened (recognition is made too strict to decide)."""
    configured = rt.settings
    rt.settings = configured.model_copy(update=TOO_STRICT)
    try:
        (face,) = recognize_photo(runtime=rt, actor=DOOR, data=photo).faces
    finally:
        rt.settings = configured
    assert face.decision == "review" and face.review_id is not None, face.decision
    return face.review_id


def use(rt: Runtime, **settings: object) -> None:
    rt.settings = rt.settings.model_copy(update=settings)


def events(rt: Runtime, action: str = templates.AUTO_TEMPLATE_ACTION) -> list[AuditEvent]:
    with rt.db.session() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def best(rt: Runtime, child_id: int, photo: bytes) -> tuple[int, int]:
    """(best template's face id, number of templates) of the child as the gallery searches it now."""
    (scored,) = rt.current_gallery().child_scores(_embedding(rt, photo), [child_id])
    return scored.face_id, scored.n_templates


def searched(rt: Runtime, child_id: int, photo: bytes) -> int:
    """How many templates of the child the gallery searches."""
    return best(rt, child_id, photo)[1]


def with_date(photo: bytes, stamp: str) -> bytes:
    exif = PILImage.Exif()
    exif.get_ifd(0x8769)[36867] = stamp
    out = io.BytesIO()
    PILImage.open(io.BytesIO(photo)).save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


# ---- review: confirmed faces -------------------------------------------------------------------------


def test_a_confirmed_face_becomes_a_template_under_confirmed_and_never_under_off(
    runtime: Runtime, photos: Photos  # noqa: F811
) -> None:
    ann = child_with(runtime, "Ann", photos.person(0, 0))
    # another person assigned to Ann: far from a near-duplicate of her template
    item = queued(runtime, photos.person(1, 0))
    done = review.resolve(runtime=runtime, actor=STAFF, review_id=item, action="assign", child_id=ann)
    assert done.template_added and done.template_refused_reasons == []
    assert done.view.face.review_state == ReviewState.enrolled and done.view.face.child_id == ann
    (event,) = events(runtime)
    assert event.actor == "user:teacher" and event.child_id == ann
    assert event.after["face_id"] == done.view.face.id and event.after["retired_face_ids"] == []
    assert event.after["source"] == "review" and event.after["review_id"] == item
    assert event.face_ids == [done.view.face.id]
    resolved = events(runtime, "review.resolved")[0]
    assert resolved.after["template_added"] is False and resolved.after["template_by_policy"] is True
    assert searched(runtime, ann, photos.person(1, 3)) == 2 and runtime.gallery.check().clean

    use(runtime, auto_templates="off")
    item = queued(runtime, photos.person(2, 0))
    done = review.resolve(runtime=runtime, actor=STAFF, review_id=item, action="assign", child_id=ann)
    assert not done.template_added and done.template_refused_reasons == ["auto_templates_off"]
    assert done.view.face.review_state == ReviewState.rejected
    assert len(events(runtime)) == 1 and searched(runtime, ann, photos.person(2, 3)) == 2
    # staff may still say so themselves
    item = queued(runtime, photos.person(3, 0))
    done = review.resolve(runtime=runtime, actor=STAFF, review_id=item, action="assign", child_id=ann,
                          add_as_template=True)
    assert done.template_added and len(events(runtime)) == 1  # the staff's own decision, not the policy's


def test_the_policy_refuses_near_duplicates_poor_quality_archived_children_and_close_siblings(
    runtime: Runtime, photos: Photos  # noqa: F811
) -> None:
    ann = child_with(runtime, "Ann", photos.person(0, 0))
    ben = child_with(runtime, "Ben", photos.person(1, 0))

    # a new photo of Ann that is almost her template again: nothing to add
    item = queued(runtime, photos.person(0, 2))
    done = review.resolve(runtime=runtime, actor=STAFF, review_id=item, action="confirm")
    assert done.template_refused_reasons == ["near_duplicate"] and not done.template_added
    assert done.view.face.review_state == ReviewState.rejected and done.view.face.child_id == ann

    # a blurred photo fails the quality gate: kept for the record, never a template
    blurred = jpeg(cv2.GaussianBlur(photos.people[2], (0, 0), 6))
    item = queued(runtime, blurred)
    done = review.resolve(runtime=runtime, actor=STAFF, review_id=item, action="assign", child_id=ann)
    assert not done.template_added and "blurred" in done.template_refused_reasons

    # a face of Ann assigned to Ben, but with Ann marked as Ben's sibling and scoring about as high
    use(runtime, **LOOSE_DUPLICATES, sibling_margin=0.5)
    relations.set_relation(db=runtime.db, actor=STAFF, child_id=ann, other_id=ben, kind="sibling")
    item = queued(runtime, photos.person(0, 3))
    done = review.resolve(runtime=runtime, actor=STAFF, review_id=item, action="assign", child_id=ben)
    assert done.template_refused_reasons == ["sibling_close"]
    use(runtime, sibling_margin=0.0)  # a margin nobody trails by less: the same kind of face is taken
    item = queued(runtime, photos.person(0, 4))
    done = review.resolve(runtime=runtime, actor=STAFF, review_id=item, action="assign", child_id=ann)
    assert done.template_added

    # a face kept for an archived child (decided before the archive) does not become a template
    item = queued(runtime, photos.person(3, 0))
    done = review.resolve(runtime=runtime, actor=STAFF, review_id=item, action="assign", child_id=ben,
                          add_as_template=False)
    set_child_status(db=runtime.db, actor=STAFF, child_id=ben, status=ChildStatus.archived)
    outcome = templates.promote_reviewed(runtime=runtime, actor=STAFF, face_id=done.view.face.id,
                                         child_id=ben)
    assert outcome == templates.TemplateOutcome(False, "child_not_active")
    assert len(events(runtime)) == 1 and runtime.gallery.check().clean


# ---- recognitions under "confident" ------------------------------------------------------------------


def test_confident_matches_become_templates_only_far_above_the_threshold(
    runtime: Runtime, photos: Photos  # noqa: F811
) -> None:
    ann = child_with(runtime, "Ann", photos.person(0, 0))
    child_with(runtime, "Ben", photos.person(1, 0))
    probe = photos.person(0, 3)
    # "confirmed" (the default) never stores a match
    (face,) = recognize_photo(runtime=runtime, actor=DOOR, data=probe).faces
    assert face.decision == "match" and events(runtime) == []
    use(runtime, auto_templates="confident", **LOOSE_DUPLICATES, auto_template_min_excess=0.0499)
    recognize_photo(runtime=runtime, actor=DOOR, data=probe)  # needs a score of 0.9999: too low
    use(runtime, auto_template_min_excess=0.02, auto_template_min_margin=0.5)
    recognize_photo(runtime=runtime, actor=DOOR, data=probe)  # leads Ben by less than 0.5
    assert events(runtime) == []
    use(runtime, auto_template_min_margin=0.05)
    (face,) = recognize_photo(runtime=runtime, actor=DOOR, data=probe).faces
    assert face.decision == "match" and face.candidates[0].score >= 0.97
    (event,) = events(runtime)
    assert event.actor == "system:templates" and event.child_id == ann
    assert event.after["source"] == "recognition" and event.after["score"] >= 0.97
    assert event.after["margin"] >= 0.05
    with runtime.db.session() as session:
        new = session.get(Face, event.after["face_id"])
        photo = session.get(Image, new.image_id)
    assert (new.child_id, new.review_state) == (ann, ReviewState.enrolled)
    assert photo.source == ImageSource.recognition and photo.uploaded_by == "api_key:door"
    assert runtime.media.read(photo.path)[:2] == b"\xff\xd8"
    # the same photo again: its face is a template now, a near-duplicate of itself
    recognize_photo(runtime=runtime, actor=DOOR, data=probe)
    assert len(events(runtime)) == 1 and searched(runtime, ann, probe) == 2
    assert runtime.gallery.check().clean


# ---- the cap: the oldest surplus template is retired ---------------------------------------------------


def test_the_cap_retires_the_oldest_template_which_stays_on_record(
    runtime: Runtime, photos: Photos  # noqa: F811
) -> None:
    use(runtime, **LOOSE_DUPLICATES, max_templates_per_child=2, stale_template_days=100)
    ann = child_with(runtime, "Ann", with_date(photos.person(0, 0), "2022:03:01 10:00:00"),
                     with_date(photos.person(0, 1), "2021:03:01 10:00:00"))
    with runtime.db.session() as session:
        newer, oldest = session.scalars(select(Face.id).where(Face.child_id == ann).order_by(Face.id)).all()

    # both were enrolled by staff just now: the policy never retires such recent work
    item = queued(runtime, with_date(photos.person(0, 2), "2025:06:01 10:00:00"))
    done = review.resolve(runtime=runtime, actor=STAFF, review_id=item, action="confirm")
    assert done.template_refused_reasons == ["template_cap"] and events(runtime) == []

    with runtime.db.transaction() as session:  # enrolled long ago
        long_ago = datetime.now(UTC) - timedelta(days=400)
        session.execute(update(Face).where(Face.child_id == ann).values(created_at=long_ago))
    # a photo older than every template would only be retired again
    item = queued(runtime, with_date(photos.person(0, 4), "2019:06:01 10:00:00"))
    done = review.resolve(runtime=runtime, actor=STAFF, review_id=item, action="confirm")
    assert done.template_refused_reasons == ["older_than_templates"]

    item = queued(runtime, with_date(photos.person(0, 5), "2025:06:01 10:00:00"))
    done = review.resolve(runtime=runtime, actor=STAFF, review_id=item, action="confirm")
    assert done.template_added
    added = done.view.face.id
    (event,) = events(runtime)
    assert event.after["retired_face_ids"] == [oldest] and event.face_ids == sorted([added, oldest])
    with runtime.db.session() as session:
        retired = session.get(Face, oldest)
        kept_photo = session.get(Image, retired.image_id)
        retired_at = session.scalar(select(Face.retired_at).where(Face.id == oldest))
        active = session.scalars(
            select(Face.id).where(Face.child_id == ann, Face.retired_at.is_(None),
                                  Face.review_state == ReviewState.enrolled)
        ).all()
    # kept: the row, its embedding and its photo; not searched
    assert retired.review_state == ReviewState.enrolled and retired_at is not None
    assert runtime.media.read(kept_photo.path)[:2] == b"\xff\xd8"
    assert sorted(active) == sorted([newer, added])
    # the retired template's own photo no longer finds it: Ann is scored over the other two
    assert best(runtime, ann, photos.person(0, 1))[0] in (newer, added)
    assert searched(runtime, ann, photos.person(0, 3)) == 2 and runtime.current_gallery().check().clean


def test_recency_weighting_prefers_the_childs_newest_photo(
    runtime: Runtime, photos: Photos  # noqa: F811
) -> None:
    # Ann's photos: her own (2019) and, newest, another person's (2025) standing in for how she looks now
    ann = child_with(runtime, "Ann", with_date(photos.person(0, 0), "2019:01:01 10:00:00"),
                     with_date(photos.person(4, 0), "2025:01:01 10:00:00"))
    probe = photos.person(0, 3)
    vector = _embedding(runtime, probe)
    plain = runtime.current_gallery().child_scores(vector, [ann])[0].score
    weighted_runtime = Runtime(runtime.settings.model_copy(update={"template_recency_half_life_days": 365.0}),
                               db=runtime.db, pipeline=runtime.pipeline)
    weighted_runtime.start(autosave=False)
    try:
        gallery = weighted_runtime.current_gallery()
        weighted = gallery.child_scores(vector, [ann])[0].score
        # six years older than her newest photo: weight 0.5 ** 6, so the score leans on the newest one
        newest_only = float(np.dot(vector, _embedding(runtime, photos.person(4, 0))))
        weight = 0.5 ** ((datetime(2025, 1, 1) - datetime(2019, 1, 1)).days / 365.0)
        expected = weight * plain + (1 - weight) * newest_only
        assert weighted == pytest.approx(expected, abs=2e-3) and weighted < plain - 0.05
        assert gallery.check().clean
    finally:
        weighted_runtime.close()


def _embedding(rt: Runtime, photo: bytes) -> np.ndarray:
    return rt.pipeline.process([rt.pipeline.decode(photo)])[0][0].embedding


def test_recency_weighting_keeps_the_cosine_scale(pipeline, photos: Photos) -> None:  # noqa: ANN001, F811
    from childface.index import create_index
    from childface.services.gallery import ChildIndex

    settings = Settings(_env_file=None, device="cpu")
    shots = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (0, 3), (0, 4), (1, 3), (1, 4), (7, 0)]
    found = pipeline.process([pipeline.decode(photos.person(p, n)) for p, n in shots])
    embedded = np.stack([faces[0].embedding for faces in found]).astype(np.float32)
    vectors, probes = embedded[:6], embedded[6:]  # two children, 3 photos each; 4 more of them, a stranger
    faces, children = np.arange(1, 7), np.array([1, 1, 1, 2, 2, 2])
    sims = probes @ vectors.T
    best = np.stack([sims[:, :3].max(axis=1), sims[:, 3:].max(axis=1)], axis=1)
    lowest = np.stack([sims[:, :3].min(axis=1), sims[:, 3:].min(axis=1)], axis=1)

    def scores(rule: str, days: list[int] | None) -> np.ndarray:
        index = ChildIndex(create_index(settings, "m", vectors.shape[1]), rule,
                           recency_half_life_days=None if days is None else 180.0)
        index.upsert(faces, children, vectors)
        if days is not None:
            index.set_taken(faces, days)
        return np.array([[c.score for c in sorted(index.child_scores(p, [1, 2]), key=lambda c: c.child_id)]
                         for p in probes])

    ages = [19000, 19500, 20000, 19000, 19500, 20000]
    for rule in ("max", "mean2"):
        plain = scores(rule, None)
        assert np.allclose(scores(rule, [20000] * 6), plain, atol=1e-6)  # one age: nothing changes
        aged = scores(rule, ages)
        # a blend of the child's cosines: within its templates' range, so the thresholds keep their meaning
        assert (aged <= best + 1e-6).all() and (aged >= lowest - 1e-6).all()
        assert np.abs(aged - plain).max() > 1e-3  # and the older photos do count for less
    assert (scores("max", ages) <= scores("max", None) + 1e-6).all()  # never above the plain best template
