"""Cameras: each source's state (running, reconnecting, error and its message), frames and faces per
second, its last events, and the latest frame on request, as `childface watch` reports them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import cv2
import pytest
from admin_ui import live, ui
from admin_ui.client import ApiError
from skimage.data import astronaut
from streamlit.testing.v1 import AppTest

from childface.services.sightings import TrackReport, record_track, store_frame, update_camera_status

from .conftest import LiveApi, client, unique

NOW = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)


def _at(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).isoformat()


def test_how_long_ago_in_words() -> None:
    assert [live.ago(_at(s), NOW) for s in (0.5, 42, 125, 7300, 86400, 3 * 86400)] == [
        "just now", "42 s ago", "2 min ago", "2 h ago", "1 day ago", "3 days ago"]
    assert live.ago(None, NOW) == "never"
    assert live.ago(_at(-5), NOW) == "just now"  # a clock a little ahead is not "in the future"


def test_a_reporting_camera_that_went_quiet_is_silent_a_stopped_one_is_not() -> None:
    def camera(state: str, seconds_ago: float) -> dict:
        return {"state": state, "updated_at": _at(seconds_ago)}

    assert not live.silent(camera("running", 5), NOW)
    assert live.silent(camera("running", live.SILENT_AFTER_S + 1), NOW)
    assert live.silent(camera("reconnecting", 600), NOW)
    assert not live.silent(camera("stopped", 600), NOW) and not live.silent(camera("error", 600), NOW)


def test_states_rates_and_events_in_words() -> None:
    assert live.state_badge("running") == ":green-badge[Running]"
    assert live.state_badge("error") == ":red-badge[Error]"
    assert live.state_badge("paused") == ":gray-badge[Paused]"  # a state this admin does not know yet
    assert (live.rate(None), live.rate(14.96)) == ("-", "15.0")
    events = [
        {"kind": "sighting", "child_id": 1, "child_name": "Ada", "decision": "match", "score": 0.912,
         "at": _at(60)},
        {"kind": "unknown_person", "child_id": None, "child_name": None, "decision": "unknown",
         "score": None, "at": _at(10)},
        {"kind": "arrival", "child_id": 1, "child_name": "Ada", "decision": "match", "score": 0.9,
         "at": _at(61)},
    ]
    rows = live.event_rows(events, UTC)
    assert [r["What"] for r in rows] == ["Unknown person", "Seen", "Arrived"]  # newest first
    assert rows[0] == {"When": "26 Nov, 08:59:50", "What": "Unknown person", "Who": "-",
                       "Decision": "Unknown", "Score": "-"}
    assert rows[1]["Who"] == "Ada" and rows[1]["Decision"] == "Recognised" and rows[1]["Score"] == "0.91"


# ---- the page, against the real API --------------------------------------------------------------


def report(server: LiveApi, source: str, decision: str, child_id: int | None) -> None:
    """A track that ended at this camera, recorded as `childface watch` records it."""
    now = datetime.now(UTC)
    record_track(server.runtime, TrackReport(
        source=source, track_id=unique("track"), decision=decision, child_id=child_id,
        score=0.91 if child_id else 0.2, candidates=[(child_id, 0.91)] if child_id else [], first_seen=now,
        last_seen=now, frames=25, best_chip=None, best_embedding=None, final=True))


def heartbeat(server: LiveApi, name: str, state: str, error: str | None = None) -> bool:
    return update_camera_status(server.db, name, uri_kind="stream", state=state, fps=14.96,
                                faces_per_s=3.2, error=error)


@pytest.fixture(scope="module")
def cameras(api: LiveApi) -> tuple[LiveApi, dict[str, str]]:
    """The API with three cameras reported: one running with events, one reconnecting, one failed."""
    server = api  # no other admin test reports cameras: these are the page's only ones
    names = {"door": unique("door"), "garden": unique("garden"), "hall": unique("hall")}
    heartbeat(server, names["door"], "running")
    heartbeat(server, names["garden"], "reconnecting", "connection refused by 10.0.0.7")
    heartbeat(server, names["hall"], "error", "cannot open rtsp://hall/stream_1")
    ada = client(server).post("/children", json={"external_id": unique("A"), "name": "Ada Camera"})
    report(server, names["door"], "match", ada["id"])
    report(server, names["door"], "unknown", None)
    return server, names


def test_cameras_show_state_rates_problems_and_events(
    cameras: tuple[LiveApi, dict[str, str]], signed_in: Callable[..., AppTest]
) -> None:
    server, names = cameras
    at = signed_in(server, "viewer")
    at.switch_page("views/cameras.py").run()
    assert not at.exception, at.exception
    headings = [m.value for m in at.markdown if m.value.startswith("####")]
    assert headings == [f"#### {ui.md(names['door'])} :green-badge[Running]",
                        f"#### {ui.md(names['garden'])} :orange-badge[Reconnecting]",
                        f"#### {ui.md(names['hall'])} :red-badge[Error]"]
    door = {m.label: m.value for m in at.metric[:4]}
    last = door.pop("Last report")
    assert door == {"Frames/s": "15.0", "Faces/s": "3.2", "Source": "Stream"}
    assert last.endswith(("just now", "s ago"))
    assert "connection refused by 10.0.0.7" in " ".join(w.value for w in at.warning)
    assert [e.value for e in at.error] == ["Stopped by an error: cannot open rtsp://hall/stream\\_1"]
    (events,) = (d.value for d in at.dataframe)  # the door's: the other two saw nobody
    assert list(events["What"]) == ["Unknown person", "Arrived"]
    assert list(events["Who"]) == ["-", "Ada Camera"]
    assert not [b for b in at.button if b.label == "Show latest frame"]  # a whole frame is for staff


def test_the_latest_frame_comes_on_request_and_is_served_once(
    cameras: tuple[LiveApi, dict[str, str]], signed_in: Callable[..., AppTest]
) -> None:
    server, names = cameras
    frame = cv2.imencode(".jpg", cv2.cvtColor(astronaut(), cv2.COLOR_RGB2BGR))[1].tobytes()
    stop = threading.Event()

    def watcher() -> None:
        # what `childface watch` does between frames: report, and hand over a frame when asked
        while not stop.wait(0.05):
            if heartbeat(server, names["door"], "running"):
                store_frame(server.db, names["door"], frame)

    at = signed_in(server, "staff")
    at.switch_page("views/cameras.py").run()
    buttons = {b.key: b for b in at.button if b.label == "Show latest frame"}
    assert buttons[f"camera_frame_{names['garden']}"].disabled  # only a running camera sends frames
    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    try:
        at.button(key=f"camera_frame_{names['door']}").click().run()
    finally:
        stop.set()
        thread.join()
    assert not at.exception, at.exception
    assert not [w.value for w in at.warning if "No frame" in w.value]
    (image,) = at.image
    assert image.captions[0].startswith(f"{names['door']} at ")
    with pytest.raises(ApiError) as gone:  # handed out once: nothing of the video stays on the server
        client(server).get_bytes(f"/cameras/{names['door']}/frame")
    assert gone.value.status == 404
    at.button(key=f"camera_hide_{names['door']}").click().run()
    assert not at.image
