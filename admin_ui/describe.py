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
    "review.queued": "Sent for review",
    "review.resolved": "Review decided",
    "duplicates.dismissed": "Not the same child",
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
        return f"Face {target} of {name_of(before.get('child_id'))} removed{photo}"
    if action == "face.reassigned":
        old, new = name_of(before.get("child_id")), name_of(after.get("child_id"))
        return f"Face {target} moved from {old} to {new}"
    if action == "face.rejected":
        return f"Face {target} of {child} taken out of use (kept on record)"
    if action == "review.queued":
        return f"{_plural(int(after.get('faces') or 0), 'face')} of a photo sent for review"
    if action == "review.resolved":
        who = (after.get("new_child") or {}).get("name") or name_of(after.get("child_id"))
        text = _RESOLUTIONS.get(after.get("resolution", ""), "decided").format(child=who)
        added = "; kept as a new photo of the child" if after.get("template_added") else ""
        return f"Review {target}: {text}{added}"
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
    details = _generic(after) or _generic(before)
    return action_words(action) + (f": {details}" if details else "")


def when(value: str, zone: Any) -> str:
    """An API timestamp (ISO 8601, UTC) as a readable local time, e.g. '26 Nov 2026, 09:41'."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment.astimezone(zone).strftime("%d %b %Y, %H:%M")
