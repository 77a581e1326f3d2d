"""Cameras: each source `childface watch` runs, its state (running, reconnecting, error and why), frames
and faces per second, its last events, and on request the latest frame with the faces boxed.

Nothing of the video is stored: a frame is made only when someone asks for it here, the API hands it
out once, and the page keeps it in this browser session only, until hidden or replaced by a newer one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import streamlit as st

from admin_ui import live, ui, widgets
from admin_ui.client import ApiError

#: a whole camera frame shows everyone in view: staff only, like an original photo
FRAME_PERMISSION = "write"
#: how long to wait for the watcher to answer a frame request (it looks for one at each status report)
FRAME_WAIT_S = 8.0
FRAME_POLL_S = 0.4
#: shown this wide at most: enough to see who is where, small enough to keep the other cameras in view
FRAME_WIDTH_PX = 720
#: seconds between updates of the cards while the page is open
UPDATE_EVERY_S = 5

ui.require("read")
api = ui.api()
st.title("Cameras")
zone, zone_note = widgets.local_zone()
URI_KINDS = {"file": "Video file", "webcam": "Webcam", "stream": "Stream"}


def fetch_frame(name: str) -> bytes | None:
    """Ask the camera for a frame, then wait a few seconds for it; None (and a message) when none came."""
    path = f"/cameras/{quote(name, safe='')}"
    if ui.call(lambda: api.post(f"{path}/frame-request")) is None:
        return None
    reason = ""
    with st.spinner(f"Waiting for a frame from {ui.md(name)}..."):
        deadline = time.monotonic() + FRAME_WAIT_S
        while True:
            try:
                return api.get_bytes(f"{path}/frame")
            except ApiError as exc:
                if exc.status != 404:
                    st.error(exc.message, icon=":material/error:")
                    return None
                reason = exc.message
            if time.monotonic() >= deadline:
                break
            time.sleep(FRAME_POLL_S)
    st.warning(f"No frame came from {ui.md(name)} within {FRAME_WAIT_S:.0f} s ({ui.md(reason)}). "
               "Is the camera running? Try again.")
    return None


def camera_card(camera: dict[str, Any], now: datetime) -> None:
    name, state = camera["name"], camera["state"]
    st.markdown(f"#### {ui.md(name)} {live.state_badge(state)}")
    figures = st.columns(4)
    figures[0].metric("Frames/s", live.rate(camera["fps"]))
    figures[1].metric("Faces/s", live.rate(camera["faces_per_s"]))
    figures[2].metric("Source", URI_KINDS.get(camera["uri_kind"], camera["uri_kind"]))
    figures[3].metric("Last report", live.ago(camera["updated_at"], now))
    problem = ui.md(camera["last_error"]) if camera["last_error"] else ""
    if state == "error":
        st.error(f"Stopped by an error: {problem or 'no reason given'}", icon=":material/error:")
    elif state == "reconnecting":
        st.warning("The stream dropped: reconnecting, waiting longer after each failed try."
                   + (f" Last problem: {problem}" if problem else ""), icon=":material/sync_problem:")
    if live.silent(camera, now):
        st.warning(f"No report from this camera since {live.ago(camera['updated_at'], now)}: "
                   "is `childface watch` still running?", icon=":material/schedule:")

    events = camera.get("recent_events") or []
    if events:
        st.dataframe(live.event_rows(events, zone), hide_index=True, width="stretch",
                     key=f"camera_events_{name}")
    else:
        st.caption("No events yet.")

    if not ui.can(FRAME_PERMISSION):
        return
    frames: dict[str, tuple[bytes, str]] = st.session_state.setdefault("camera_frames", {})
    show, hide = st.columns([1, 4])
    running = state == "running"
    if show.button("Show latest frame", key=f"camera_frame_{name}", icon=":material/photo_camera:",
                   disabled=not running, help=None if running else "Only a running camera can send a frame."):
        jpeg = fetch_frame(name)
        if jpeg is not None:
            frames[name] = (jpeg, datetime.now(UTC).isoformat())
    if name in frames:
        jpeg, fetched = frames[name]
        if hide.button("Hide frame", key=f"camera_hide_{name}"):
            del frames[name]
            st.rerun()
        st.image(jpeg, caption=f"{name} at {live.parse_time(fetched).astimezone(zone):%H:%M:%S}",
                 width=FRAME_WIDTH_PX)


@st.fragment(run_every=UPDATE_EVERY_S if st.toggle(f"Update every {UPDATE_EVERY_S} s", value=True,
                                                   key="cameras_auto") else None)
def camera_list() -> None:
    """Every camera's card; on its own timer, so the rest of the page (and a shown frame) stays put."""
    cameras = ui.call(lambda: api.get("/cameras"))
    if cameras is None:
        return
    if not cameras:
        st.info("No camera has reported yet. Cameras appear here once `childface watch` runs "
                "(see *Live recognition* in the README).")
        return
    now = datetime.now(UTC)
    st.caption(f"{len(cameras)} camera(s), as of {now.astimezone(zone):%H:%M:%S}. A camera reports its state "
               f"every few seconds. {zone_note}")
    for camera in sorted(cameras, key=lambda c: c["name"].casefold()):
        with st.container(border=True):
            camera_card(camera, now)


camera_list()
