"""Pieces the list and detail pages share: local times, child names and pickers, pictures in parallel.

Every lookup is sized for thousands of children: a picker searches the API
(one request, at most `PICK_LIMIT` matches) instead of loading every child,
and a page's thumbnails are fetched together, a few at a time. Thumbnails and
names are kept for `CACHE_TTL_S` only: an erased child's must not outlive the
erasure in a signed-in session for more than that.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import streamlit as st

from admin_ui import ui
from admin_ui.client import Api, ApiError

PICK_LIMIT = 20
#: parallel thumbnail requests: enough to hide latency, few enough not to crowd the API
_THUMBNAIL_WORKERS = 8
_THUMBNAIL_CACHE = 2000
#: seconds a session keeps a thumbnail or a child's name
CACHE_TTL_S = 60.0


def _session_cache(name: str) -> dict[int, tuple[float, Any]]:
    """A per-session cache of (fetched at, value) entries, without the expired ones."""
    cache: dict[int, tuple[float, Any]] = st.session_state.setdefault(name, {})
    now = time.monotonic()
    for key in [k for k, (at, _) in cache.items() if now - at > CACHE_TTL_S]:
        del cache[key]
    return cache


def local_zone() -> tuple[tzinfo, str]:
    """The zone times are shown in, and a note saying which: the browser's when it says, else the server's."""
    name = st.context.timezone
    if name:
        try:
            return ZoneInfo(name), f"Times are in your browser's time zone ({name})."
        except ZoneInfoNotFoundError:
            pass
    zone = datetime.now().astimezone().tzinfo
    assert zone is not None
    return zone, f"Times are in the server's time zone ({datetime.now(zone).strftime('%Z')})."


def child_names(ids: Iterable[int | None]) -> dict[int, str]:
    """'Name (ID)' of these children, looked up once per session (erased children: 'an erased child')."""
    known = _session_cache("child_names")
    api = ui.api()
    for child_id in {i for i in ids if i is not None} - set(known):
        try:
            child = api.get(f"/children/{child_id}")
            name = f"{child['name']} ({child['external_id']})"
        except ApiError as exc:
            name = "an erased child" if exc.status == 404 else f"child {child_id}"
        known[child_id] = (time.monotonic(), name)
    return {child_id: name for child_id, (_, name) in known.items()}


def find_child(
    label: str, key: str, *, exclude: Iterable[int] = (), status: str | None = "active"
) -> int | None:
    """A search box and the matching children (by name or ID); the chosen child's id, or None."""
    text = st.text_input(label, key=f"{key}_search", placeholder="Type a name or ID")
    if not text.strip():
        return None
    page = ui.call(lambda: ui.api().get("/children", q=text.strip(), status=status, limit=PICK_LIMIT))
    skip = set(exclude)
    options = {c["id"]: f"{c['name']} ({c['external_id']})" for c in (page or {}).get("items", [])
               if c["id"] not in skip}
    if not options:
        st.caption("No child matches.")
        return None
    now = time.monotonic()
    _session_cache("child_names").update((child_id, (now, name)) for child_id, name in options.items())
    return st.selectbox("Matching children", list(options), format_func=options.get, key=key, index=None,
                        placeholder=f"{len(options)} match(es): choose one")


def thumbnails(face_ids: Iterable[int | None]) -> dict[int, bytes | None]:
    """JPEG thumbnails of these faces: fetched in parallel, then from memory for `CACHE_TTL_S`."""
    face_ids = list(face_ids)
    cache = _session_cache("thumbnail_cache")
    missing = sorted({i for i in face_ids if i is not None} - set(cache))
    if missing:
        token = st.session_state.get("token")

        def fetch(face_id: int) -> bytes | None:
            try:
                return Api(token=token).get_bytes(f"/faces/{face_id}/thumbnail")
            except ApiError:
                return None

        with ThreadPoolExecutor(min(_THUMBNAIL_WORKERS, len(missing))) as pool:
            now = time.monotonic()
            cache.update((i, (now, jpeg)) for i, jpeg in zip(missing, pool.map(fetch, missing), strict=True))
        while len(cache) > _THUMBNAIL_CACHE:
            cache.pop(next(iter(cache)))
    return {i: cache[i][1] if i in cache else None for i in face_ids if i is not None}


def photo_with_box(face: dict[str, Any], label: str = "") -> Any:
    """The original photo of a face with the face boxed (PIL image), or None when it cannot be read."""
    data = ui.call(lambda: ui.api().get_bytes(f"/faces/{face['id']}/photo"))
    if data is None:
        return None
    try:
        return ui.draw_boxes(data, [(face["box"], label, "#f39c12")])
    except OSError:
        st.warning("This photo's format cannot be shown here.")
        return None
