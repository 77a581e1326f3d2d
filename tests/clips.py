"""Test video: synthetic clips from packaged photos, and a small MJPEG-over-HTTP stream server.

The clip builder lives in the package (`childface.bench.clips`) because the
benchmark uses it too; this module adds what only tests need: a stream that
serves frames the way an IP camera does (multipart/x-mixed-replace JPEGs over
HTTP), drops the connection after a number of frames, and refuses a few
reconnection attempts before serving again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from childface.bench.clips import (  # noqa: F401 - re-exported for the tests
    DEFAULT_CAST,
    Clip,
    Person,
    build_clip,
    clip_people,
    render_frames,
    score_tracks,
    write_clip,
)

BOUNDARY = "childfaceframe"


class MjpegServer:
    """Serves `frames` (RGB) at `fps` on http://127.0.0.1:PORT/stream.mjpg.

    Each connection gets `per_connection` frames (from where the last one stopped), then the
    server closes it: a dropped stream. The `refuse` next connection attempts after a drop get
    HTTP 503 (a camera rebooting). `connections` counts the streams served.
    """

    def __init__(
        self, frames: Sequence[np.ndarray], *, fps: float = 30.0, per_connection: int = 10, refuse: int = 0
    ) -> None:
        self.jpegs = [cv2.imencode(".jpg", np.ascontiguousarray(f[:, :, ::-1]))[1].tobytes() for f in frames]
        self.fps, self.per_connection, self.refuse_after_drop = fps, per_connection, refuse
        self.connections = 0
        self.served = 0
        self._refuse = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep the test output quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path != "/stream.mjpg":
                    self.send_error(404)
                    return
                with owner._lock:
                    if owner._refuse > 0:
                        owner._refuse -= 1
                        refused = True
                    else:
                        refused = False
                        owner.connections += 1
                if refused:
                    self.send_error(503, "camera restarting")
                    return
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                try:
                    for _ in range(owner.per_connection):
                        if owner._closing.is_set():
                            break
                        jpeg = owner.jpegs[owner.served % len(owner.jpegs)]
                        self.wfile.write(
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                            .encode() + jpeg + b"\r\n"
                        )
                        self.wfile.flush()
                        owner.served += 1
                        time.sleep(1.0 / owner.fps)
                except (BrokenPipeError, ConnectionResetError):
                    return
                with owner._lock:
                    owner._refuse = owner.refuse_after_drop
                self.close_connection = True  # the drop

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/stream.mjpg"

    def __enter__(self) -> MjpegServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
