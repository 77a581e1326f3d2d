"""Audit events in words for people: a short name for each action, and one sentence of what happened.

The API keeps its codes (`child.created`, `face.reassigned`, ...); the admin shows
these words instead. Child names come from the event itself where it recorded
them, otherwise from `name_of` (the page looks them up), and times from `local`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

ACTIONS = {
    "child.created": "Child added",
    "child.updated": "Child details changed",
    "child.archived": "Child archived",
    "child.unarchived": "Child active again",
    "child.merged": "Children merged",
    "child.erased": "Child erased",
    "face.enrolled": "Photo enrolled",
    "face.removed": "Face removed",
    "face.reassigned": "Face moved",
    "face.rejected": "Face taken out of use",
    "face.auto_template": "New photo kept automatically",
    "review.queued": "Sent for review",
    "review.resolved": "Review decided",
    "duplicates.dismissed": "Not the same child",
    "child.relation_added": "Sibling or twin marked",
    "child.relation_changed": "Sibling or twin changed",
    "child.relation_removed": "Sibling or twin unmarked",
    "import.started": "Import started",
    "import.batch": "Faces imported",
    "import.finished": "Import finished",
    "import.failed": "Import failed",
    "import.interrupted": "Import interrupted",
    "user.created": "Staff account created",
    "user.updated": "Staff account changed",
    "user.password_reset": "Password reset",
    "user.password_changed": "Password changed",
    "api_key.created": "API key created",
    "api_key.revoked": "API key revoked",
    "settings.changed": "Settings changed",
    "audit.undone": "Change undone",
    "faces.purged": "Removed faces deleted",
    "integrity.repaired": "Damaged face data repaired",
    "retention.run": "Retention",
}
_SOURCES = {
    "admin_upload": "from a photo uploaded in the admin",
    "api": "through the API",
    "csv_import": "from an import",
    "recognition": "from a recognised photo",
}
_CHILD_FIELDS = {"name": "name", "external_id": "ID", "group": "group", "notes": "notes", "status": "status"}
_RESOLUTIONS = {"confirm": "confirmed as {child}", "assign": "assigned to {child}",
                "new_child": "added as a new child, {child}", "dismiss": "nobody enrolled"}

NameOf = Callable[[int | None], str]

#: a relation's kind in words (`/children/{id}/relations`)
RELATION_KINDS = {"sibling": "sibling", "twin": "twin"}
#: why recognition did not call a face a match (the API's decision `reasons`), in words
DECISION_REASONS = {
    "below_accept": "not similar enough to be sure",
    "below_review": "not similar enough to anyone enrolled",
    "small_margin": "another child looks almost as similar",
    "several_candidates": "several children look similar",
    "sibling": "a marked sibling looks almost as similar",
    "twin": "the twin looks almost as similar",
    "no_templates": "nobody is enrolled yet",
}
#: the quality gate's failed checks (decision reasons `quality:<check>`), in words
QUALITY_CHECKS = {
    "too_small": "the face is too small",
    "blurred": "the photo is blurred",
    "profile": "the face is turned away",
    "tilted": "the head is tilted",
    "low_detector_score": "the face is not clear",
    "low_quality": "the photo quality is low",
}


def decision_reasons(codes: list[str] | None) -> str:
    """A decision's reason codes as one sentence for staff ('' for none, as for a match)."""
    words = []
    for code in codes or []:
        kind, _, check = code.partition(":")
        if kind == "quality" and check:
            words.append(QUALITY_CHECKS.get(check, check.replace("_", " ")))
        else:
            words.append(DECISION_REASONS.get(code, code.replace("_", " ")))
    return "; ".join(words).capitalize() + "." if words else ""


def children_named(event: dict[str, Any]) -> set[int]:
    """The child ids an event's words may name (for looking their names up before `sentence`)."""
    before, after = event.get("before") or {}, event.get("after") or {}
    ids = [event.get("child_id"), before.get("child_id"), after.get("child_id")]
    ids += after.get("child_ids") or []
    if event.get("action") == "child.merged" and str(event.get("target_id") or "").isdigit():
        ids.append(int(event["target_id"]))
    return {i for i in ids if isinstance(i, int)}


def action_words(code: str) -> str:
    """The action's name for people; unknown codes read as themselves, tidied."""
    return ACTIONS.get(code, code.replace("_", " ").replace(".", ": ").capitalize())


def actor_words(actor: str) -> str:
    """`user:anna` -> `anna`; `api_key:door` -> `API key door`; `system:childface` -> `the system`."""
    kind, _, name = actor.partition(":")
    if kind == "user":
        return name
    if kind == "api_key":
        return f"API key {name}"
    return "the system" if kind == "system" else actor


def _quote(value: object) -> str:
    return "nothing" if value in (None, "") else f"'{value}'"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _changes(before: dict[str, Any], after: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    def label(key: str) -> str:
        return (labels or {}).get(key, key.replace("_", " "))

    parts = [
        f"{label(key)} from {_quote(before.get(key))} to {_quote(after.get(key))}"
        for key in after
        if before.get(key) != after.get(key) and (labels is None or key in labels)
    ]
    return ", ".join(parts) if parts else "no visible change"


def _generic(values: dict[str, Any]) -> str:
    shown = {key: value for key, value in values.items() if value not in (None, "")}
    return ", ".join(f"{key.replace('_', ' ')}: {value}" for key, value in shown.items())


def sentence(event: dict[str, Any], name_of: NameOf) -> str:  # noqa: C901, PLR0911, PLR0912 - one case per action
    """What the event did, in one sentence for staff (no JSON)."""
    action = event["action"]
    before, after = event.get("before") or {}, event.get("after") or {}
    target = event.get("target_id")
    child = name_of(event.get("child_id"))
    if action == "child.created":
        group = f" to group {after['group']}" if after.get("group") else ""
        return f"{after.get('name') or child} (ID {after.get('external_id') or '?'}) added{group}"
    if action == "child.updated":
        return f"{after.get('name') or child}: " + _changes(before, after, _CHILD_FIELDS)
    if action == "child.archived":
        return f"{after.get('name') or child} archived: no longer recognised"
    if action == "child.unarchived":
        return f"{after.get('name') or child} is active again: recognised again"
    if action == "child.merged":
        moved = len(after.get("moved_face_ids") or [])
        source = before.get("name") or (name_of(int(target)) if target else "?")
        return (f"{source} merged into {child}: "
                f"{_plural(moved, 'face')} moved")
    if action == "child.erased":
        others = len(after.get("child_ids") or []) - 1
        merged = f" (and {_plural(others, 'merged record')})" if others > 0 else ""
        return (f"Child erased{merged}: {_plural(int(after.get('faces_deleted') or 0), 'face')} and "
                f"{_plural(int(after.get('images_deleted') or 0), 'photo')} deleted")
    if action == "face.enrolled":
        source = _SOURCES.get(after.get("source", ""), "")
        checked = " (confirmed despite the consistency check)" if after.get("confirmed_despite_check") else ""
        return f"Face {target} of {child} enrolled {source}{checked}".replace("  ", " ").strip()
    if action == "face.removed":
        photo = " with its photo" if after.get("image_deleted") else ""
        kept = _date(after.get("kept_until"))
        until = f" (can be restored until {kept})" if kept else ""
        return f"Face {target} of {name_of(before.get('child_id'))} removed{photo}{until}"
    if action == "audit.undone":
        undone = str(after.get("action") or "")
        if undone == "audit.undone":
            return f"The undo of change {after.get('undoes')} was undone: the change is back"
        return f"Change {after.get('undoes')} undone ({action_words(undone).lower()})"
    if action == "faces.purged":
        purged = len(after.get("purged_face_ids") or [])
        return (f"{_plural(purged, 'removed face')} deleted for good after "
                f"{after.get('keep_days', '?')} days (can no longer be restored)")
    if action == "face.reassigned":
        old, new = name_of(before.get("child_id")), name_of(after.get("child_id"))
        return f"Face {target} moved from {old} to {new}"
    if action == "face.rejected":
        return f"Face {target} of {child} taken out of use (kept on record)"
    if action == "face.auto_template":
        why = "a recognition far above the threshold" if after.get("source") == "recognition" else \
            "confirmed in review"
        retired = len(after.get("retired_face_ids") or [])
        older = f"; {_plural(retired, 'older photo')} retired (kept, no longer used)" if retired else ""
        return f"Face {target} of {child} kept as a new photo ({why}){older}"
    if action == "review.queued":
        return f"{_plural(int(after.get('faces') or 0), 'face')} of a photo sent for review"
    if action == "review.resolved":
        who = (after.get("new_child") or {}).get("name") or name_of(after.get("child_id"))
        text = _RESOLUTIONS.get(after.get("resolution", ""), "decided").format(child=who)
        added = "; kept as a new photo of the child" if after.get("template_added") else ""
        return f"Review {target}: {text}{added}"
    if action.startswith("child.relation_"):
        a, b = (after.get("child_ids") or [None, None])[:2]
        was, now = (before.get("kind"), after.get("kind"))
        kinds = {kind: f"{RELATION_KINDS[kind]}s" for kind in RELATION_KINDS}
        if action == "child.relation_added":
            return f"{name_of(a)} and {name_of(b)} marked as {kinds.get(now, 'siblings or twins')}"
        if action == "child.relation_changed":
            return (f"{name_of(a)} and {name_of(b)} now marked as {kinds.get(now, 'siblings or twins')}"
                    + (f" (were {kinds[was]})" if was in kinds else ""))
        return f"{name_of(a)} and {name_of(b)} no longer marked as {kinds.get(was, 'siblings or twins')}"
    if action == "duplicates.dismissed":
        a, b = (after.get("child_ids") or [None, None])[:2]
        return f"{name_of(a)} and {name_of(b)} marked as different children (not a duplicate)"
    if action == "import.batch":
        # one batch may hold several children's faces: the counts are the batch's
        return (f"Faces added from import {after.get('run_id', target)} (this batch: "
                f"{_plural(int(after.get('faces') or 0), 'face')} from "
                f"{_plural(int(after.get('photos') or 0), 'photo')})")
    if action.startswith("import."):
        details = _generic(after)
        return f"{action_words(action)} (import {target})" + (f": {details}" if details else "")
    if action.startswith("user."):
        username = after.get("username") or before.get("username") or target
        if action == "user.updated":
            return f"Account {username}: " + _changes(before, after)
        return f"{action_words(action)}: {username}" + (f" ({after['role']})" if after.get("role") else "")
    if action == "api_key.created":
        return f"API key {after.get('name')} created for {', '.join(after.get('scopes') or [])}"
    if action == "settings.changed":
        return "Changed " + _changes(before, after)
    if action == "integrity.repaired":
        return (f"Data of {_plural(int(after.get('repaired') or 0), 'face')} computed again from the "
                "stored photos (it was damaged in the database)")
    if action == "retention.run":
        due = int(after.get("children_due") or 0)
        return (f"Retention: {due} archived {'child' if due == 1 else 'children'} due for erasure, "
                f"{_plural(int(after.get('review_items_dropped') or 0), 'old review')} and "
                f"{_plural(int(after.get('crops_dropped') or 0), 'video crop')} removed")
    details = _generic(after) or _generic(before)
    return action_words(action) + (f": {details}" if details else "")


def _date(value: object) -> str | None:
    """The day of an ISO 8601 time, e.g. '26 Dec 2026'; None for anything else (e.g. an erased value)."""
    try:
        return datetime.fromisoformat(str(value)).strftime("%d %b %Y") if value else None
    except ValueError:
        return None


def when(value: str, zone: Any) -> str:
    """An API timestamp (ISO 8601, UTC) as a readable local time, e.g. '26 Nov 2026, 09:41'."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment.astimezone(zone).strftime("%d %b %Y, %H:%M")


def age_words(value: str, now: datetime | None = None) -> str:
    """How long ago an API timestamp was, for a photo: 'today', '12 days old', '3 months old',
    '1 year 2 months old'."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    days = max(0, ((now or datetime.now(moment.tzinfo)) - moment).days)
    if days == 0:
        return "today"
    if days < 31:
        return f"{_plural(days, 'day')} old"
    months = int(days / 30.44)
    if months < 12:
        return f"{_plural(months, 'month')} old"
    years, months = divmod(months, 12)
    return f"{_plural(years, 'year')}{' ' + _plural(months, 'month') if months else ''} old"


#: where a photo's date came from (`taken_at_source`), in words
TAKEN_SOURCES = {"exif": "from EXIF", "upload": "upload date"}


def photo_age(taken_at: str | None, source: str | None, now: datetime | None = None) -> str:
    """'3 months old (from EXIF)' for a face's photo; '' when the API did not say."""
    if not taken_at:
        return ""
    return f"{age_words(taken_at, now)} ({TAKEN_SOURCES.get(source or '', 'upload date')})"
