"""Video sources: a file, a webcam index or an RTSP/HTTP stream, read in a thread, with reconnection.

    source = VideoSource(SourceSpec.parse("rtsp://cam.local/door", name="front-door"))
    source.start()
    frame = source.read(timeout=1.0)      # Frame(index, rgb, at) or None (nothing new yet)
    source.state                          # "starting" | "running" | "reconnecting" | "stopped" | "error"
    source.stop()

Frames are opened with OpenCV's `VideoCapture` (FFmpeg inside the wheel); when
OpenCV cannot open a file or URL and PyAV is installed (the `video` extra), PyAV
reads it instead.

Files are read as fast as the consumer takes frames (no frame is dropped; the
queue blocks) and end at their last frame, or start again with `loop`. Live
sources (webcams and streams) keep only the newest frames: a consumer that
falls behind sees the present, not a growing backlog. When a live source fails
to open or stops delivering, the reader says "reconnecting" and tries again
after a delay that doubles from `backoff_s` up to `backoff_max_s`; the first
frame after that says "running" again. A file that cannot be opened is an
"error" (there is nothing to wait for).
"""

from __future__ import annotations

import logging
import queue
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

STATES = ("starting", "running", "reconnecting", "stopped", "error")
#: a URI with a scheme is a stream (rtsp://, http://, https://, rtmp://, udp://, tcp://, ...)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
#: source names appear in the database, the log and URLs: keep them plain
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: frames a file source reads ahead of the consumer
_FILE_QUEUE = 4
#: frames a live source keeps for a consumer that is behind (older ones are dropped)
_LIVE_QUEUE = 2
#: a stream that cannot be opened, or sends nothing, for this long counts as dropped
STREAM_TIMEOUT_MS = 10_000


def redacted(uri: str) -> str:
    """The URI with its password hidden (rtsp://user:***@cam/door): what logs, status rows and error
    texts show, since camera URLs often carry credentials."""
    scheme, sep, rest = uri.partition("://")
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not sep or not at:
        return uri
    user, colon, _password = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}{slash}{path}"


def _scrubbed(text: str, uri: str) -> str:
    """A message (ours or a decoder's) with the URI in it redacted."""
    return text.replace(uri, redacted(uri))


class SourceError(ValueError):
    """A source description that cannot work (bad name, missing file)."""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    uri: str
    kind: str  # "file" | "webcam" | "stream"
    loop: bool = False  # files only: start again at the end

    @classmethod
    def parse(cls, text: str, *, name: str | None = None, loop: bool = False) -> SourceSpec:
        """A webcam index ("0"), a URL with a scheme, or a file path; `name` defaults to one derived
        from the URI ("webcam-0", the file's stem, the URL's host)."""
        uri = text.strip()
        if not uri:
            raise SourceError("a source needs a file, a webcam index or a URL")
        if uri.isdigit():
            kind = "webcam"
            default = f"webcam-{uri}"
        elif _SCHEME.match(uri):
            kind = "stream"
            default = re.sub(r"[^A-Za-z0-9_.-]+", "-", uri.split("://", 1)[1].split("/", 1)[0].split("@")[-1])
        else:
            kind = "file"
            path = Path(uri)
            if not path.is_file():
                raise SourceError(f"video file not found: {uri}")
            default = path.stem
        chosen = name if name is not None else default.strip("-.") or kind
        if not _NAME.match(chosen):
            raise SourceError(
                f"source name {chosen!r}: use 1-100 letters, digits, '-', '_' or '.' (e.g. front-door)"
            )
        return cls(name=chosen, uri=uri, kind=kind, loop=loop and kind == "file")


@dataclass(frozen=True)
class Frame:
    index: int  # frames read from this source since it started (across reconnections)
    rgb: np.ndarray  # (H, W, 3) uint8
    at: datetime  # when it was read (UTC)


class Backoff:
    """Delays for reconnecting: `first`, doubling, capped at `cap`; `reset()` after a success."""

    def __init__(self, first: float = 0.5, cap: float = 30.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


def opencv_frames(spec: SourceSpec) -> Iterator[np.ndarray] | None:
    if spec.kind == "webcam":
        capture = cv2.VideoCapture(int(spec.uri))
    elif spec.kind == "stream":
        # a camera that stops sending without closing the connection must not block the reader forever
        timeouts = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                    STREAM_TIMEOUT_MS]
        capture = cv2.VideoCapture(spec.uri, cv2.CAP_FFMPEG, timeouts)
    else:
        capture = cv2.VideoCapture(spec.uri)
    if not capture.isOpened():
        capture.release()
        return None

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, bgr = capture.read()
                if not ok or bgr is None:
                    return
                yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    return frames()


def pyav_frames(spec: SourceSpec) -> Iterator[np.ndarray] | None:
    """The same frames through PyAV (FFmpeg's own bindings), for what OpenCV cannot open."""
    try:
        import av
    except ImportError:
        return None
    try:
        container = av.open(spec.uri, timeout=10.0)
    except (OSError, av.FFmpegError) as exc:
        log.debug("PyAV cannot open %s: %s", redacted(spec.uri), _scrubbed(str(exc), spec.uri))
        return None
    if not container.streams.video:
        container.close()
        return None

    def frames() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(video=0):
                yield frame.to_ndarray(format="rgb24")
        except (OSError, av.FFmpegError):  # a broken stream ends like the end of a file
            return
        finally:
            container.close()

    return frames()


def open_frames(spec: SourceSpec) -> Iterator[np.ndarray] | None:
    """RGB frames of a source (OpenCV first, then PyAV), or None when neither can open it."""
    frames = opencv_frames(spec)
    if frames is None and spec.kind != "webcam":
        frames = pyav_frames(spec)
        if frames is not None:
            log.info("source %s: OpenCV cannot open %s, reading it with PyAV", spec.name, redacted(spec.uri))
    return frames


class VideoSource:
    """One source read by a background thread; `read` hands its frames to one consumer."""

    def __init__(
        self,
        spec: SourceSpec,
        *,
        backoff: Backoff | None = None,
        opener: Callable[[SourceSpec], Iterator[np.ndarray] | None] = open_frames,
    ) -> None:
        self.spec = spec
        self.backoff = backoff or Backoff()
        self._open = opener
        live = spec.kind != "file"
        self._queue: queue.Queue[Frame | None] = queue.Queue(_LIVE_QUEUE if live else _FILE_QUEUE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._state = "starting"
        self.error: str | None = None
        self.dropped = 0  # live frames dropped because the consumer was behind
        self.reconnects = 0
        self.ended = False  # the reader is done (file end, error, stop): nothing more will come

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def _set_state(self, state: str, error: str | None = None) -> None:
        if error is not None:  # shown in the log, the camera's status row and the admin
            error = _scrubbed(error, self.spec.uri)
        with self._lock:
            if state == self._state and error == self.error:
                return
            self._state, self.error = state, error
        if state == "reconnecting":
            log.warning("source %s: %s; reconnecting", self.spec.name, error)
        elif state == "error":
            log.error("source %s: %s", self.spec.name, error)
        else:
            log.info("source %s: %s", self.spec.name, state)

    def start(self) -> VideoSource:
        self._thread = threading.Thread(target=self._run, name=f"video-{self.spec.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        while True:  # unblock a reader waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None:
            self._thread.join(timeout)

    def read(self, timeout: float = 0.0) -> Frame | None:
        """The next frame, waiting up to `timeout` seconds; None when there is none (see `ended`)."""
        try:
            frame = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        if frame is None:
            self.ended = True
        return frame

    def _run(self) -> None:
        index = 0
        live = self.spec.kind != "file"
        try:
            while not self._stop.is_set():
                frames = self._open(self.spec)
                if frames is None:
                    if not live:
                        self._set_state("error", f"cannot open {self.spec.uri}")
                        return
                    self._wait_to_reconnect(f"cannot open {self.spec.uri}")
                    continue
                got = 0
                for rgb in frames:
                    if self._stop.is_set():
                        break
                    if got == 0:
                        self._set_state("running")
                        self.backoff.reset()
                    got += 1
                    self._put(Frame(index, np.ascontiguousarray(rgb), datetime.now(UTC)), live)
                    index += 1
                if self._stop.is_set():
                    break
                if not live:
                    if self.spec.loop and got:
                        continue
                    if got == 0:
                        self._set_state("error", f"no frames in {self.spec.uri}")
                    return
                self._wait_to_reconnect("the stream ended" if got else f"no frames from {self.spec.uri}")
        except Exception as exc:  # noqa: BLE001 - a decoder crash ends this source, not the process
            # decoder messages may quote the URI, password included
            self._set_state("error", f"{type(exc).__name__}: {exc}")
        finally:
            if self.state not in ("error",):
                self._set_state("stopped")
            self._finish()

    def _wait_to_reconnect(self, reason: str) -> None:
        self.reconnects += 1
        self._set_state("reconnecting", reason)
        self._stop.wait(self.backoff.next())

    def _put(self, frame: Frame, live: bool) -> None:
        if live:
            while True:
                try:
                    self._queue.put_nowait(frame)
                    return
                except queue.Full:
                    try:
                        self._queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass
        while not self._stop.is_set():
            try:
                self._queue.put(frame, timeout=0.2)
                return
            except queue.Full:
                continue

    def _finish(self) -> None:
        """Tell the consumer nothing more comes (a None after the last frame)."""
        while not self._stop.is_set():
            try:
                self._queue.put(None, timeout=0.2)
                return
            except queue.Full:
                continue
        self.ended = True
