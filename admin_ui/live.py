"""What the Attendance and Cameras pages show, made from the API's answers: rows, counts and words.

Pure functions (no Streamlit, no HTTP), so the pages stay short and these are tested on their own.
Times from the API are ISO 8601 in UTC; attendance is shown in the kindergarten's time zone
(the API's `attendance_timezone`, which also decides what "a day" is), camera reports in the
reader's zone.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

NO_GROUP = "(no group)"
ALL_GROUPS = "All groups"

#: a camera's state in words, and the colour of its badge (Streamlit's named colours)
STATES = {
    "starting": ("Starting", "blue"),
    "running": ("Running", "green"),
    "reconnecting": ("Reconnecting", "orange"),
    "stopped": ("Stopped", "gray"),
    "error": ("Error", "red"),
}
#: states in which `childface watch` keeps reporting: a long silence then means it is gone
_REPORTING = {"starting", "running", "reconnecting"}
#: seconds without a report after which a reporting camera is called silent (a watcher reports
#: every few seconds; a minute leaves room for a slow start or a loaded machine)
SILENT_AFTER_S = 60.0

EVENTS = {
    "arrival": "Arrived",
    "sighting": "Seen",
    "unknown_person": "Unknown person",
    "review": "Sent for review",
}
DECISIONS = {"match": "Recognised", "review": "Not sure", "unknown": "Unknown"}


def parse_time(value: str) -> datetime:
    """An API timestamp as an aware datetime (naive ones are UTC, as the API stores them)."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def zone_named(name: str | None) -> tzinfo:
    """The time zone of this IANA name; UTC when it is missing or unknown here."""
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


def clock(value: str, zone: tzinfo) -> str:
    """'08:05' for a time of the day being shown."""
    return parse_time(value).astimezone(zone).strftime("%H:%M")


def group_name(group: str | None) -> str:
    return group or NO_GROUP


def child_label(child: dict[str, Any]) -> str:
    return f"{child['name']} ({child['external_id']})"


# ---- attendance ------------------------------------------------------------------------------------


def group_names(groups: list[dict[str, Any]]) -> list[str]:
    """The groups of an attendance answer, named and in order, for the group filter."""
    return sorted({group_name(g["group"]) for g in groups}, key=lambda n: (n == NO_GROUP, n.casefold()))


def pick_groups(groups: list[dict[str, Any]], chosen: str) -> list[dict[str, Any]]:
    """The groups to show: all of them (ordered like `group_names`), or the chosen one."""
    order = group_names(groups)
    shown = [g for g in groups if chosen == ALL_GROUPS or group_name(g["group"]) == chosen]
    return sorted(shown, key=lambda g: order.index(group_name(g["group"])))


def totals(groups: list[dict[str, Any]]) -> tuple[int, int]:
    """(arrived, not arrived) over these groups."""
    return sum(len(g["arrived"]) for g in groups), sum(len(g["absent"]) for g in groups)


def arrived_children(group: dict[str, Any]) -> list[dict[str, Any]]:
    """The group's arrivals, earliest first (the order people came in)."""
    return sorted(group["arrived"], key=lambda a: (parse_time(a["arrived_at"]), a["name"].casefold()))


def absent_children(group: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(group["absent"], key=lambda c: (c["name"].casefold(), c["external_id"]))


def arrival_rows(arrivals: list[dict[str, Any]], zone: tzinfo) -> list[dict[str, str]]:
    return [{"Time": clock(a["arrived_at"], zone), "Name": a["name"], "ID": a["external_id"],
             "Camera": a["source"]} for a in arrivals]


def absent_rows(children: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"Name": c["name"], "ID": c["external_id"]} for c in children]


def group_heading(group: dict[str, Any], *, today: bool) -> str:
    """'Robins: 3 of 5 arrived, 2 not yet' (for another day: '2 did not come')."""
    arrived, absent = len(group["arrived"]), len(group["absent"])
    missing = f"{absent} not yet" if today else f"{absent} did not come"
    return f"{group_name(group['group'])}: {arrived} of {arrived + absent} arrived" + (
        f", {missing}" if absent else "")


# ---- cameras ------------------------------------------------------------------------------------


def state_badge(state: str) -> str:
    """The state as a coloured badge in Streamlit markdown."""
    words, colour = STATES.get(state, (state.capitalize(), "gray"))
    return f":{colour}-badge[{words}]"


def ago(value: str | None, now: datetime) -> str:
    """How long ago, in words: 'just now', '42 s ago', '5 min ago', '3 h ago', '2 days ago'."""
    if not value:
        return "never"
    seconds = max(0.0, (now - parse_time(value)).total_seconds())
    if seconds < 2:
        return "just now"
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h ago"
    days = seconds // 86400
    return f"{days:.0f} day ago" if days == 1 else f"{days:.0f} days ago"


def silent(camera: dict[str, Any], now: datetime, after_s: float = SILENT_AFTER_S) -> bool:
    """A camera that should be reporting has said nothing for `after_s`: its watcher probably stopped."""
    updated = camera.get("updated_at")
    if camera["state"] not in _REPORTING or not updated:
        return False
    return (now - parse_time(updated)).total_seconds() > after_s


def rate(value: float | None) -> str:
    """Frames or faces per second, as shown on a camera's card ('-' when the camera did not say)."""
    return "-" if value is None else f"{value:.1f}"


def event_rows(events: list[dict[str, Any]], zone: tzinfo) -> list[dict[str, str]]:
    """A camera's recent events, newest first, for its table."""
    newest = sorted(events, key=lambda e: parse_time(e["at"]), reverse=True)
    return [
        {"When": parse_time(e["at"]).astimezone(zone).strftime("%d %b, %H:%M:%S"),
         "What": EVENTS.get(e["kind"], e["kind"].replace("_", " ").capitalize()),
         "Who": e.get("child_name") or "-",
         "Decision": DECISIONS.get(e.get("decision") or "", e.get("decision") or "-"),
         "Score": "-" if e.get("score") is None else f"{e['score']:.2f}"}
        for e in newest
    ]
