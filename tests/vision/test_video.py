"""Video sources: files (to the end, or looping), PyAV, an HTTP MJPEG stream that drops and comes back."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pytest

from childface.bench.clips import write_clip
from childface.vision.video import Backoff, SourceError, SourceSpec, VideoSource, pyav_frames, redacted
from clips import MjpegServer

FRAMES = 10


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten 96x64 frames, each a flat grey of its own level (so the order can be read back)."""
    path = Path(tmp_path_factory.mktemp("video")) / "short.avi"
    write_clip([np.full((64, 96, 3), 20 * n, np.uint8) for n in range(FRAMES)], path, fps=10)
    return path


def _drain(source: VideoSource, limit: int, timeout_s: float = 10.0) -> list:
    frames = []
    deadline = time.monotonic() + timeout_s
    while len(frames) < limit and not source.ended and time.monotonic() < deadline:
        frame = source.read(timeout=0.1)
        if frame is not None:
            frames.append(frame)
    return frames


def test_parse_tells_files_webcams_and_streams_apart(short_clip: Path) -> None:
    assert SourceSpec.parse("0") == SourceSpec("webcam-0", "0", "webcam")
    stream = SourceSpec.parse("rtsp://user:pw@10.1.2.3:554/stream1")
    assert (stream.kind, stream.name) == ("stream", "10.1.2.3-554")
    assert SourceSpec.parse(str(short_clip), name="door", loop=True) == SourceSpec(
        "door", str(short_clip), "file", loop=True
    )
    assert SourceSpec.parse("http://cam/x", loop=True).loop is False  # only files loop
    with pytest.raises(SourceError, match="not found"):
        SourceSpec.parse("/no/such/video.mp4")
    with pytest.raises(SourceError, match="source name"):
        SourceSpec.parse("0", name="front door!")


def test_a_file_is_read_in_order_to_its_end(short_clip: Path) -> None:
    source = VideoSource(SourceSpec.parse(str(short_clip))).start()
    frames = _drain(source, 100)
    source.stop()
    assert [f.index for f in frames] == list(range(FRAMES))
    levels = [int(np.median(f.rgb)) for f in frames]
    assert levels == sorted(levels) and levels[-1] - levels[0] > 150
    assert frames[0].rgb.shape == (64, 96, 3)
    assert source.ended and source.state == "stopped"


def test_a_looping_file_starts_again(short_clip: Path) -> None:
    source = VideoSource(SourceSpec.parse(str(short_clip), loop=True)).start()
    frames = _drain(source, 2 * FRAMES + 3)
    source.stop()
    assert len(frames) == 2 * FRAMES + 3
    assert int(np.median(frames[FRAMES].rgb)) < int(np.median(frames[FRAMES - 1].rgb))  # back at the start


def test_a_file_that_is_no_video_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video at all" * 100)
    source = VideoSource(SourceSpec.parse(str(bad))).start()
    assert _drain(source, 5) == []
    assert source.ended and source.state == "error" and source.error


def test_pyav_reads_what_opencv_reads(short_clip: Path) -> None:
    pytest.importorskip("av", reason="PyAV is the optional `video` extra")
    frames = pyav_frames(SourceSpec.parse(str(short_clip)))
    assert frames is not None
    levels = [int(np.median(rgb)) for rgb in frames]
    assert len(levels) == FRAMES and levels == sorted(levels)
    assert pyav_frames(SourceSpec("x", "http://127.0.0.1:9/none", "stream")) is None


def test_backoff_doubles_up_to_its_cap_and_resets() -> None:
    backoff = Backoff(0.5, 3.0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_a_dropped_stream_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    frames = [np.full((48, 64, 3), 10 * n, np.uint8) for n in range(20)]
    states: list[str] = []
    with MjpegServer(frames, per_connection=6, refuse=2) as server, caplog.at_level(logging.INFO):
        source = VideoSource(SourceSpec.parse(server.url, name="cam"), backoff=Backoff(0.05, 0.2)).start()
        got = []
        deadline = time.monotonic() + 15
        while len(got) < 14 and time.monotonic() < deadline:
            frame = source.read(timeout=0.05)
            if frame is not None:
                got.append(frame)
            if not states or states[-1] != source.state:
                states.append(source.state)
        source.stop()
    assert len(got) >= 14, states
    assert server.connections >= 3 and source.reconnects >= 3  # two drops, each with refused attempts
    # running, then reconnecting, then running again: said in the state and in the log
    assert "reconnecting" in states and states[-1] in ("running", "stopped")
    first = states.index("reconnecting")
    assert "running" in states[first:]
    messages = [r.getMessage() for r in caplog.records if r.name == "childface.vision.video"]
    assert any("reconnecting" in m for m in messages)
    assert any(m.endswith(": running") for m in messages[1:])


def test_redacted_hides_only_the_password() -> None:
    assert redacted("rtsp://admin:hunter2@cam.local:554/door?x=1") == "rtsp://admin:***@cam.local:554/door?x=1"
    assert redacted("rtsp://admin@cam.local/door") == "rtsp://admin@cam.local/door"
    assert redacted("http://cam.local/a@b") == "http://cam.local/a@b"  # an @ in the path is no userinfo
    assert redacted("0") == "0" and redacted("/videos/door.mp4") == "/videos/door.mp4"


def test_a_stream_that_fails_never_shows_its_password(caplog: pytest.LogCaptureFixture) -> None:
    """A real open of a closed port (refused at once): the error state and every log line are redacted."""
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://viewer:hunter2@127.0.0.1:{port}/stream.mjpg"
    with caplog.at_level(logging.DEBUG, logger="childface.vision.video"):
        source = VideoSource(SourceSpec.parse(uri, name="door"), backoff=Backoff(0.05, 0.1)).start()
        errors = set()
        deadline = time.monotonic() + 10
        while source.reconnects < 2 and time.monotonic() < deadline:
            errors.add(source.error)  # what the heartbeat stores as the camera's last_error
            time.sleep(0.01)
        source.stop()
    assert source.reconnects >= 2
    assert f"cannot open http://viewer:***@127.0.0.1:{port}/stream.mjpg" in errors
    messages = [r.getMessage() for r in caplog.records]
    assert any("viewer:***@" in m for m in messages)
    assert not any("hunter2" in m for m in [*filter(None, errors), *messages])
