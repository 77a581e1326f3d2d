"""A gallery that ages with the child: automatic templates, retired templates, "needs new photos".

Children change; a gallery of photos from two years ago recognises them less
well each month. Three things keep it current.

Automatic templates (`auto_templates`)
--------------------------------------
- ``off``: only staff add templates (enrollment, import, or a review resolved
  with ``add_as_template: true``).
- ``confirmed`` (default): a face staff confirmed in review (confirm, assign,
  new child) becomes a template unless staff said ``add_as_template: false``,
  subject to the checks below (`promote_reviewed`). An explicit
  ``add_as_template: true`` is the staff member's own decision: it is added when
  the face passed the quality gate, as before, without the policy.
- ``confident``: also a `/recognize` match far above the accept threshold
  (score >= accept_threshold + auto_template_min_excess and a lead of at least
  auto_template_min_margin over the next child) stores its photo (source
  `recognition`) and becomes a template (`consider_recognition`).

The checks (`template_verdict`, a pure function): the face passed every
quality gate; the child is active; the face is not a near-duplicate (cosine
above auto_template_max_similarity to one of the child's searched templates:
it would add nothing); no marked sibling scores within `sibling_margin` (a twin
within `twin_margin`) of the child (the template would pull the two children
together). A policy that cannot drift into another child: only faces that are
clearly this child, by staff or by a wide margin, and never a lookalike
relative's.

At most `max_templates_per_child` searched templates
---------------------------------------------------
Adding a template beyond the cap retires the oldest templates (by the day
their photo was taken: `images.taken_at`) in the same unit of work:
`faces.retired_at` is set, the face, its embedding and its photo stay, and the
index stops searching it (services/gallery.py's indexability rule). Staff
enrollments count toward the cap, but a photo staff enrolled (upload, API,
import) in the last `stale_template_days` is never retired: the policy does
not undo recent work of a person. When no template can be retired (all are
such photos), or when the new face's photo is itself the oldest, the new face
is not added (`template_cap`, `older_than_templates`). Staff enrollments
themselves never retire anything.

Every addition is one unit of work with one `face.auto_template` event: actor
``system:templates`` (recognitions) or the staff member who confirmed the
review; `child_id`; after = {"face_id", "retired_face_ids", "score",
"margin", "source": "review" | "recognition", ...}; `face_ids` = the added
face and the retired ones, so every process's index catches up. Undoing the
event (`POST /audit/{seq}/undo`) re-activates `retired_face_ids` and takes the
added face out again.

Needs new photos
----------------
`children_needing_photos`: active children whose newest searched template was
taken more than `stale_template_days` ago, and (separately) active children
with no searched template at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from childface.db.models import (
    Child,
    ChildStatus,
    Embedding,
    Face,
    Image,
    ImageSource,
    ReviewState,
    UtcDateTime,
)
from childface.db.session import Actor, Database
from childface.services.children import get_child_row
from childface.services.enrollment import FaceAlreadyStored, Photo, persist_face, photo_taken, store_photo
from childface.services.file_journal import pending_writes
from childface.services.gallery import indexable_query

if TYPE_CHECKING:
    from childface.config import Settings
    from childface.services.recognition import Identification
    from childface.services.runtime import Runtime
    from childface.vision.pipeline import DetectedFace

AUTO_TEMPLATE_ACTION = "face.auto_template"
#: who adds templates from recognitions (a confirmed review's template is added by its staff member)
TEMPLATES_ACTOR = Actor("system", "templates")
#: photos a person enrolled on purpose: never retired while younger than `stale_template_days`
STAFF_SOURCES = (ImageSource.admin_upload, ImageSource.api, ImageSource.csv_import)

# why a face did not become a template (`template_verdict` and the writers)
OK = "ok"
OFF = "auto_templates_off"
NEEDS_CONFIRMATION = "needs_confirmation"  # an unconfirmed recognition outside 'confident'
CHILD_NOT_ACTIVE = "child_not_active"
LOW_QUALITY = "low_quality"
LOW_SCORE = "low_score"
SMALL_MARGIN = "small_margin"
NEAR_DUPLICATE = "near_duplicate"
SIBLING_CLOSE = "sibling_close"
TEMPLATE_CAP = "template_cap"
OLDER_THAN_TEMPLATES = "older_than_templates"
ALREADY_STORED = "already_stored"
NO_EMBEDDING = "no_embedding"
FACE_CHANGED = "face_changed"

#: ids per IN list (bounded: SQLite and drivers limit bound parameters)
_IN_CHUNK = 500


# ---- the decision ------------------------------------------------------------------------------------


def template_verdict(
    *,
    confirmed: bool,
    score: float | None,
    margin: float | None,
    quality_ok: bool,
    best_similarity_to_child_templates: float | None,
    settings: Settings,
    child_active: bool = True,
    relatives: Iterable[tuple[str, float]] = (),
) -> tuple[bool, str]:
    """Whether a face becomes a template of a child: (True, "ok") or (False, reason code).

    `confirmed`: staff confirmed the face (review); else it is a recognition match, which needs
    auto_templates "confident", `score` >= accept_threshold + auto_template_min_excess and `margin`
    (lead over the next child; None: no other child) >= auto_template_min_margin.
    `best_similarity_to_child_templates`: the face's highest cosine to the child's searched
    templates (None: the child has none). `relatives`: (kind "sibling" | "twin", the child's score
    minus that relative's) for each marked relative with templates. Pure: evaluation simulates the
    policy with it.
    """
    if settings.auto_templates == "off":
        return False, OFF
    if not child_active:
        return False, CHILD_NOT_ACTIVE
    if not quality_ok:
        return False, LOW_QUALITY
    if not confirmed:
        if settings.auto_templates != "confident":
            return False, NEEDS_CONFIRMATION
        if score is None or score < settings.accept_threshold + settings.auto_template_min_excess:
            return False, LOW_SCORE
        if margin is not None and margin < settings.auto_template_min_margin:
            return False, SMALL_MARGIN
    if (
        best_similarity_to_child_templates is not None
        and best_similarity_to_child_templates > settings.auto_template_max_similarity
    ):
        return False, NEAR_DUPLICATE
    for kind, lead in relatives:
        if lead < (settings.twin_margin if kind == "twin" else settings.sibling_margin):
            return False, SIBLING_CLOSE
    return True, OK


@dataclass(frozen=True)
class TemplateOutcome:
    """What the policy did with one face."""

    added: bool
    reason: str  # "ok" when added, else why not (module constants)
    face_id: int | None = None
    retired_face_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Evidence:
    """What the verdict needs to know about a face and a child, read before any write lock."""

    child_active: bool
    best_similarity: float | None
    own_score: float | None  # the child-level score of the face against the child (None: no templates)
    relatives: list[tuple[str, float]]


def gather_evidence(runtime: Runtime, child_id: int, vector: np.ndarray) -> Evidence:
    """The child's state, the face's best similarity to its searched templates, and the lead over
    each marked relative (scored like recognition: the gallery's child-level scores)."""
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    gallery = runtime.current_gallery()
    with runtime.db.session() as session:
        status = session.scalar(select(Child.status).where(Child.id == child_id))
        templates = indexable_query(runtime.model_db_id).where(Face.child_id == child_id)
        own = [np.frombuffer(blob, dtype="<f4") for _, _, blob in session.execute(templates)]
    best = float(np.max(np.stack(own) @ query)) if own else None
    kin = runtime.current_relations().get(child_id, {})
    scored = {c.child_id: c.score for c in gallery.child_scores(query, [child_id, *kin])}
    own_score = scored.get(child_id)
    # a child without templates of its own cannot be told from a relative that has some
    mine = -1.0 if own_score is None else own_score
    relatives = [(kind, mine - scored[other]) for other, kind in kin.items() if other in scored]
    return Evidence(status == ChildStatus.active, best, own_score, relatives)


# ---- the writers -------------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def promote_reviewed(
    *, runtime: Runtime, actor: Actor, face_id: int, child_id: int, review_id: int | None = None
) -> TemplateOutcome:
    """A face staff confirmed as `child_id` in review (kept with review state `rejected`) becomes a
    template if the policy allows (module docstring); one `face.auto_template` unit of work."""
    settings = runtime.current_settings()
    if settings.auto_templates == "off":
        return TemplateOutcome(False, OFF)
    with runtime.db.session() as session:
        face = session.get(Face, face_id)
        blob = session.scalar(
            select(Embedding.vector).where(
                Embedding.face_id == face_id, Embedding.model_id == runtime.model_db_id
            )
        )
    if face is None:
        return TemplateOutcome(False, FACE_CHANGED)
    if blob is None:
        return TemplateOutcome(False, NO_EMBEDDING)  # queued under another embedding model
    evidence = gather_evidence(runtime, child_id, np.frombuffer(blob, dtype="<f4"))
    ok, reason = template_verdict(
        confirmed=True,
        score=evidence.own_score,
        margin=None,
        quality_ok=bool((face.quality_details or {}).get("passed", False)),
        best_similarity_to_child_templates=evidence.best_similarity,
        settings=settings,
        child_active=evidence.child_active,
        relatives=evidence.relatives,
    )
    if not ok:
        return TemplateOutcome(False, reason)
    try:
        with runtime.db.unit_of_work(actor) as uow:
            session = uow.session
            if get_child_row(session, child_id, lock=True).status != ChildStatus.active:
                raise _Refused(CHILD_NOT_ACTIVE)
            row = session.scalar(select(Face).where(Face.id == face_id).with_for_update())
            if (
                row is None
                or row.child_id != child_id
                or row.review_state != ReviewState.rejected
                or row.retired_at is not None
            ):
                raise _Refused(FACE_CHANGED)  # someone acted on the face since the review
            row.review_state = ReviewState.enrolled
            session.flush()
            retired = make_room(session, child_id, face_id, settings)
            _audit(uow, face_id, child_id, retired, evidence.own_score, None, source="review",
                   review_id=review_id, best_similarity=evidence.best_similarity)
    except _Refused as refused:
        return TemplateOutcome(False, refused.reason)
    runtime.catch_up()
    return TemplateOutcome(True, OK, face_id, retired)


def consider_recognition(
    *,
    runtime: Runtime,
    actor: Actor,
    photo: Photo,
    face: DetectedFace,
    identification: Identification,
    settings: Settings,
) -> TemplateOutcome | None:
    """Under auto_templates "confident": store a confident match's photo and face as a template of the
    matched child (module docstring). None when the face is not a match or the mode is not
    "confident"; else what was done. `actor` sent the photo (its uploader); the event's actor is
    ``system:templates``."""
    if settings.auto_templates != "confident" or identification.decision != "match":
        return None
    child_id = identification.child_id
    assert child_id is not None and photo.rgb is not None and photo.sha256 is not None
    if face.embedding is None:
        return TemplateOutcome(False, LOW_QUALITY)
    evidence = gather_evidence(runtime, child_id, face.embedding)
    ok, reason = template_verdict(
        confirmed=False,
        score=identification.score,
        margin=identification.margin,
        quality_ok=bool(face.quality.passed),
        best_similarity_to_child_templates=evidence.best_similarity,
        settings=settings,
        child_active=evidence.child_active,
        relatives=evidence.relatives,
    )
    if not ok:
        return TemplateOutcome(False, reason)
    height, width = photo.rgb.shape[:2]
    taken = photo_taken(photo, settings)  # read before the write lock
    media = runtime.media
    _, relative = media.locate(photo.data)
    # announced before it is written, settled after the commit: a refusal or a crash strands no file
    with media.hold(photo.sha256), pending_writes(runtime.db, media, [(photo.sha256, relative)]):
        store_photo(media, photo.data)
        try:
            with runtime.db.unit_of_work(TEMPLATES_ACTOR) as uow:
                session = uow.session
                if get_child_row(session, child_id, lock=True).status != ChildStatus.active:
                    raise _Refused(CHILD_NOT_ACTIVE)
                row = persist_face(
                    session,
                    sha256=photo.sha256,
                    path=relative,
                    width=width,
                    height=height,
                    source=ImageSource.recognition,
                    uploaded_by=str(actor),
                    face=face,
                    child_id=child_id,
                    model_db_id=runtime.model_db_id,
                    taken=taken,
                )
                retired = make_room(session, child_id, row.id, settings)
                _audit(uow, row.id, child_id, retired, identification.score, identification.margin,
                       source="recognition", best_similarity=evidence.best_similarity)
        except FaceAlreadyStored:
            return TemplateOutcome(False, ALREADY_STORED)
        except _Refused as refused:
            return TemplateOutcome(False, refused.reason)
    runtime.catch_up()
    return TemplateOutcome(True, OK, row.id, retired)


def make_room(session: Session, child_id: int, new_face_id: int, settings: Settings) -> list[int]:
    """Retire the child's oldest templates beyond `max_templates_per_child` (the new face counted);
    returns the retired face ids. Raises _Refused (nothing retired) when the cap cannot be kept
    without retiring a recent staff enrollment, or when the new face's photo is the oldest."""
    now = datetime.now(UTC)
    taken = func.coalesce(Image.taken_at, Image.created_at, type_=UtcDateTime())
    rows = session.execute(
        select(Face.id, Face.created_at, Image.source, taken)
        .join(Image, Image.id == Face.image_id)
        .where(
            Face.child_id == child_id,
            Face.review_state == ReviewState.enrolled,
            Face.retired_at.is_(None),
        )
    ).all()
    surplus = len(rows) - settings.max_templates_per_child
    if surplus <= 0:
        return []
    recent = now - timedelta(days=settings.stale_template_days)
    others = [
        (when, face_id)
        for face_id, created, source, when in rows
        if face_id != new_face_id and not (source in STAFF_SOURCES and created >= recent)
    ]
    if len(others) < surplus:
        raise _Refused(TEMPLATE_CAP)
    new = [(when, face_id) for face_id, _, _, when in rows if face_id == new_face_id]
    retired = [face_id for _, face_id in sorted(others + new)[:surplus]]
    if new_face_id in retired:
        raise _Refused(OLDER_THAN_TEMPLATES)
    for face in session.scalars(select(Face).where(Face.id.in_(retired))):
        face.retired_at = now
    session.flush()
    return sorted(retired)


def _audit(
    uow: Any,
    face_id: int,
    child_id: int,
    retired: list[int],
    score: float | None,
    margin: float | None,
    *,
    source: str,
    **extra: Any,
) -> None:
    def rounded(value: float | None) -> float | None:
        return None if value is None else round(float(value), 6)

    after = {
        "face_id": face_id,
        "retired_face_ids": retired,
        "score": rounded(score),
        "margin": rounded(margin),
        "source": source,
    }
    after.update({k: rounded(v) if isinstance(v, float) else v for k, v in extra.items()})
    uow.audit(
        AUTO_TEMPLATE_ACTION,
        target_type="face",
        target_id=face_id,
        child_id=child_id,
        after=after,
        face_ids=[face_id, *retired],
    )


# ---- needs new photos ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoAge:
    """One active child and how old its newest searched template's photo is."""

    child_id: int
    external_id: str
    name: str
    group: str | None
    #: when the newest template's photo was taken (None: no template)
    newest_taken_at: datetime | None
    newest_taken_at_source: str | None
    age_days: int | None
    templates: int


@dataclass(frozen=True)
class PhotoNeeds:
    stale: list[PhotoAge]  # newest template older than `stale_days`, oldest first within a group
    no_photos: list[PhotoAge]  # no searched template at all
    stale_days: int
    as_of: datetime


def children_needing_photos(
    *, db: Database, settings: Settings, group: str | None = None, now: datetime | None = None
) -> PhotoNeeds:
    """Active children (of `group`, or all) whose newest searched template was taken more than
    `stale_template_days` ago, and those without one; each list by group (no group last).

    One aggregate over the searched templates, filtered in the database (HAVING), so only the
    children listed come back; then the newest photo's date source of each stale child."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    cutoff = now - timedelta(days=settings.stale_template_days)
    taken = func.coalesce(Image.taken_at, Image.created_at, type_=UtcDateTime())
    newest, count = func.max(taken), func.count(Face.id)
    searched = and_(
        Face.child_id == Child.id, Face.review_state == ReviewState.enrolled, Face.retired_at.is_(None)
    )
    conditions = [Child.status == ChildStatus.active]
    if group is not None:
        conditions.append(Child.group_name == group)
    with db.session() as session:
        rows = session.execute(
            select(Child.id, Child.external_id, Child.display_name, Child.group_name, newest, count)
            .outerjoin(Face, searched)
            .outerjoin(Image, Image.id == Face.image_id)
            .where(*conditions)
            .group_by(Child.id, Child.external_id, Child.display_name, Child.group_name)
            .having(or_(count == 0, newest < cutoff))
        ).all()
        sources = _newest_sources(session, [row[0] for row in rows if row[5]])
    stale, missing = [], []
    for child_id, external_id, name, group_name, when, n in rows:
        if n:
            age = PhotoAge(child_id, external_id, name, group_name, when, sources.get(child_id),
                           (now - when).days, int(n))
            stale.append(age)
        else:
            missing.append(PhotoAge(child_id, external_id, name, group_name, None, None, None, 0))
    stale.sort(key=lambda a: (*_group_key(a.group), -(a.age_days or 0), a.name.lower(), a.child_id))
    missing.sort(key=lambda a: (*_group_key(a.group), a.name.lower(), a.child_id))
    return PhotoNeeds(stale, missing, settings.stale_template_days, now)


def _group_key(group: str | None) -> tuple[bool, str]:
    return group is None, (group or "").lower()


def _newest_sources(session: Session, child_ids: Sequence[int]) -> dict[int, str | None]:
    """child id -> `taken_at_source` of its newest searched template's photo."""
    if not child_ids:
        return {}
    taken = func.coalesce(Image.taken_at, Image.created_at, type_=UtcDateTime())
    newest: dict[int, tuple[datetime, str | None]] = {}
    for i in range(0, len(child_ids), _IN_CHUNK):
        rows = session.execute(
            select(Face.child_id, taken, Image.taken_at_source)
            .join(Image, Image.id == Face.image_id)
            .where(
                Face.child_id.in_(child_ids[i : i + _IN_CHUNK]),
                Face.review_state == ReviewState.enrolled,
                Face.retired_at.is_(None),
            )
        )
        for child_id, when, source in rows:
            if child_id not in newest or when > newest[child_id][0]:
                newest[child_id] = (when, source or "upload")
    return {child_id: source for child_id, (_, source) in newest.items()}
