"""`childface bench admin`: how long the admin's Children and Child detail pages take at scale.

Builds a throw-away deployment (SQLite, media folder) with N children and F
faces each through the product's own tables (bulk inserts: children, photos,
faces, embeddings, audit events recorded under their children), plus one child
with 50 faces, and starts the real API (`create_app` under uvicorn on
loopback, models loaded as `childface serve` loads them). Then, interleaved
for `repeat` rounds, it times:

- the Children page: a Streamlit AppTest run of the admin page against the
  live API (cold: the first visit of a session, pictures fetched; warm: the
  next visits), and the one API request it makes;
- the Child detail page of the child with 50 faces (cold and warm);
- the old Children page's API calls (before issue 10: the first 200 children,
  then each child's faces and first thumbnail), for comparison.

AppTest runs the page's script in this process, so a figure is the server
side of a page view (API calls and Streamlit's script run), not the browser's
drawing. The load average is read before and after: the machine's other work
moves the figures.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import requests
from PIL import Image as PILImage

from childface.api.app import create_app
from childface.bench.api import serve_in_thread
from childface.config import Settings
from childface.db.migrate import upgrade
from childface.db.models import Child, Embedding, Face, Image, ImageSource, ReviewState
from childface.db.session import Actor, Database
from childface.services import accounts
from childface.services.media import MediaStore
from childface.services.runtime import Runtime

DETAIL_FACES = 50
_ACTOR = Actor("system", "bench-admin")
_PASSWORD = "bench-admin-secret"
_PHOTOS = 64
_BATCH = 2000
_REPO = Path(__file__).resolve().parents[3]


def run_admin_benchmark(
    settings: Settings, *, children: int, faces_per_child: int, repeat: int = 3, old: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Build the deployment, time the pages `repeat` times (interleaved); the figures as a dict."""
    say = progress or (lambda _: None)
    app_file = _REPO / "admin_ui" / "app.py"
    if not app_file.is_file():
        raise FileNotFoundError(f"the admin page is not here ({app_file}): run from a checkout")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="childface-bench-admin-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        bench = settings.model_copy(update={
            "database_url": f"sqlite:///{root / 'bench.db'}", "media_dir": root / "media",
            "index_dir": root / "index",
        })
        db = Database(bench.database_url)
        stack.callback(db.dispose)
        upgrade(db)
        accounts.create_user(db=db, actor=_ACTOR, username="bench", password=_PASSWORD, role="admin")
        say("loading the models and starting the API...")
        runtime = Runtime(bench, db=db)
        stack.callback(runtime.close)
        started = time.perf_counter()
        say(f"writing {children} children with {faces_per_child} faces each...")
        detail_child = _build(db, MediaStore(bench.media_dir), runtime.model_db_id, children, faces_per_child,
                              runtime.pipeline.embedder.dim)
        build_seconds = time.perf_counter() - started
        runtime.start(autosave=False)
        url = stack.enter_context(serve_in_thread(create_app(bench, runtime)))
        pages = _Pages(url, app_file)
        stack.callback(pages.close)
        rounds: dict[str, list[float]] = {}
        for n in range(repeat):
            say(f"round {n + 1} of {repeat}...")
            for name, seconds in pages.round(detail_child, old=old).items():
                rounds.setdefault(name, []).append(seconds)
    load_after = os.getloadavg()
    return {
        "children": children + 1,
        "faces_per_child": faces_per_child,
        "detail_child_faces": DETAIL_FACES,
        "build_seconds": round(build_seconds, 2),
        "seconds": {name: {"median": round(statistics.median(v), 3), "all": [round(s, 3) for s in v]}
                    for name, v in rounds.items()},
        "target_seconds": 1.0,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "cpu_count": os.cpu_count(),
    }


class _Pages:
    """The admin against the live API: one AppTest per visit, as a new browser session would be."""

    def __init__(self, url: str, app_file: Path) -> None:
        sys.path.insert(0, str(app_file.parent.parent))  # the admin is imported from the checkout
        import admin_ui.config
        import streamlit.testing.v1  # noqa: F401 - imported before silencing: it sets up logging

        # one line per request on stdout would bury the report (and cost time)
        logging.getLogger("uvicorn.access").disabled = True

        self._previous_url = admin_ui.config.API_URL
        admin_ui.config.API_URL = url
        self.url, self.app_file = url, str(app_file)
        credentials = {"username": "bench", "password": _PASSWORD}
        login = requests.post(f"{url}/auth/login", json=credentials, timeout=60)
        login.raise_for_status()
        self.headers = {"Authorization": f"Bearer {login.json()['access_token']}"}

    def close(self) -> None:
        import admin_ui.config

        admin_ui.config.API_URL = self._previous_url

    def _signed_in(self) -> Any:
        from streamlit.testing.v1 import AppTest

        at = AppTest.from_file(self.app_file, default_timeout=300).run()
        at.text_input(key="username").input("bench")
        at.text_input(key="password").input(_PASSWORD)
        next(b for b in at.button if b.label == "Sign in").click().run()
        if at.exception or [t.value for t in at.title] != ["Children"]:
            raise RuntimeError(f"the admin did not sign in: {at.exception or [t.value for t in at.title]}")
        return at

    def round(self, detail_child: int, *, old: bool) -> dict[str, float]:
        timings: dict[str, float] = {}
        at = self._signed_in()
        # the Children page: a new session (pictures not fetched yet), then the same view again
        at.session_state["thumbnail_cache"] = {}
        timings["children_page_cold"] = _timed(at.run)
        timings["children_page_warm"] = _timed(at.run)
        at.selectbox(key="children_sort").select("Photos enrolled")
        at.selectbox(key="children_order").select("Descending")
        timings["children_page_sorted_by_faces"] = _timed(at.run)
        _raise_for(at)
        timings["children_api_request"] = _timed(lambda: self._get("/children", limit=50, sort="name"))
        timings["children_api_request_by_faces"] = _timed(
            lambda: self._get("/children", limit=50, sort="faces", order="desc")
        )
        # Child detail of the child with 50 faces
        at.session_state["child_id"] = detail_child
        at.switch_page("views/child_detail.py")
        timings["child_detail_cold"] = _timed(at.run)
        timings["child_detail_warm"] = _timed(at.run)
        _raise_for(at)
        if old:
            timings["old_children_page_api_calls"] = _timed(self._old_children_calls)
        return timings

    def _get(self, path: str, **params: Any) -> requests.Response:
        response = requests.get(self.url + path, params=params, headers=self.headers, timeout=300)
        response.raise_for_status()
        return response

    def _old_children_calls(self) -> None:
        """What the Children page requested before issue 10: 200 children, then per child its faces and
        its first face's thumbnail (one HTTP session, as the old page had)."""
        with requests.Session() as http:
            http.headers.update(self.headers)
            for child in http.get(f"{self.url}/children", params={"limit": 200}, timeout=300).json()["items"]:
                if child["n_faces"]:
                    faces = http.get(f"{self.url}/children/{child['id']}/faces", params={"state": "enrolled"},
                                     timeout=300).json()
                    http.get(f"{self.url}/faces/{faces[0]['id']}/thumbnail", timeout=300)


def _timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _raise_for(at: Any) -> None:
    if at.exception:
        raise RuntimeError(f"the page failed: {at.exception}")


def _photos(media: MediaStore) -> list[tuple[str, str]]:
    """A few distinct JPEG photos in the media folder: (sha256, relative path) each."""
    rng = np.random.default_rng(0)
    stored = []
    for _ in range(_PHOTOS):
        pixels = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        PILImage.fromarray(pixels).resize((640, 480)).save(buffer, format="JPEG", quality=85)
        stored.append(media.put(buffer.getvalue()))
    return stored


def _build(
    db: Database, media: MediaStore, model_db_id: int, n_children: int, per_child: int, dim: int
) -> int:
    """Write the children, photos, faces and embeddings; the id of the child with DETAIL_FACES faces."""
    rng = np.random.default_rng(1)
    photos = _photos(media)
    with db.unit_of_work(_ACTOR) as uow:
        images = [Image(sha256=sha, path=path, width=640, height=480, source=ImageSource.api,
                        uploaded_by=str(_ACTOR)) for sha, path in photos]
        uow.session.add_all(images)
        uow.session.flush()
        image_ids = [image.id for image in images]
        uow.audit("bench.photos", target_type="image")
    owners: list[int] = []
    for start in range(0, n_children + 1, _BATCH):
        with db.unit_of_work(_ACTOR) as uow:
            rows = [Child(external_id=f"B{i:06d}-{secrets.token_hex(2)}", display_name=f"Bench child {i}",
                          group_name=f"Group {i % 40}")
                    for i in range(start, min(n_children + 1, start + _BATCH))]
            uow.session.add_all(rows)
            uow.session.flush()
            owners += [row.id for row in rows]
            uow.audit("bench.children", target_type="child", child_ids=[row.id for row in rows])
    detail_child = owners[-1]
    plan = [(cid, per_child) for cid in owners[:-1]] + [(detail_child, DETAIL_FACES)]
    faces = [cid for cid, count in plan for _ in range(count)]
    for start in range(0, len(faces), _BATCH):
        with db.unit_of_work(_ACTOR) as uow:
            added = []
            for i in range(start, min(len(faces), start + _BATCH)):
                x, y = 20 + (i % 7) * 60, 20 + (i // 7 % 5) * 60  # one face per box on a photo
                face = Face(image_id=image_ids[i % len(image_ids)], child_id=faces[i], box_x1=float(x),
                            box_y1=float(y), box_x2=x + 160.0, box_y2=y + 160.0, landmarks=[[0.0, 0.0]] * 5,
                            detector_score=0.99, quality_score=0.9, review_state=ReviewState.enrolled,
                            quality_details={"score": 0.9, "passed": True, "reasons": []})
                uow.session.add(face)
                added.append(face)
            uow.session.flush()
            vectors = rng.standard_normal((len(added), dim)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            uow.session.add_all(
                Embedding.of(face_id=face.id, model_id=model_db_id, vector=vector.astype("<f4").tobytes())
                for face, vector in zip(added, vectors, strict=True)
            )
            uow.audit("bench.faces", target_type="face", face_ids=[f.id for f in added],
                      child_ids={f.child_id for f in added})
    return detail_child
