"""The admin against a real API: uvicorn on a free loopback port, real database, real models.

The admin is a separate program that talks HTTP, so these tests start the API
the way `childface serve` does (create_app + uvicorn), in a thread of the test
process: the face pipeline is loaded once and shared by every server. Pages
are driven with Streamlit's AppTest, which runs the admin's scripts in this
process; `admin_ui.config.API_URL` points them at the test server.
"""

from __future__ import annotations

import shutil
import socket
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from childface.api.app import create_app
from childface.bench.api import serve_in_thread
from childface.config import Settings
from childface.db import Actor, Database
from childface.services import accounts
from childface.services.runtime import Runtime
from childface.services.sample_data import ExampleDataset, build_example_dataset
from childface.vision.pipeline import FacePipeline

REPO = Path(__file__).resolve().parents[2]
# the admin is not part of the backend package: import it from the checkout, as Streamlit does
sys.path.insert(0, str(REPO))
ADMIN_APP = REPO / "admin_ui" / "app.py"
PASSWORDS = {"admin": "admin-secret-1", "staff": "staff-secret-1", "viewer": "viewer-secret-1"}


@dataclass
class LiveApi:
    url: str
    settings: Settings
    db: Database
    runtime: Runtime


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def pipeline() -> FacePipeline:
    return FacePipeline.from_settings(Settings(_env_file=None, device="cpu"))


@pytest.fixture(scope="session")
def start_api(
    tmp_path_factory: pytest.TempPathFactory, sqlite_template: Path, pipeline: FacePipeline
) -> Iterator[Callable[..., LiveApi]]:
    """Start an API server (own SQLite DB and media folder) with these settings overrides."""
    stops: list[Callable[[], None]] = []

    def start(**overrides: object) -> LiveApi:
        root = tmp_path_factory.mktemp("admin-api")
        # every test signs in from 127.0.0.1 (each page load asks /auth/me first): the per-address limit
        # on requests without credentials is not what these tests check (tests/api/test_request_limits.py)
        overrides = {"rate_limit_unauthenticated": "10000/minute", **overrides}
        shutil.copyfile(sqlite_template, root / "childface.db")
        settings = Settings(_env_file=None, database_url=f"sqlite:///{root / 'childface.db'}",
                            media_dir=root / "media", index_dir=root / "index", device="cpu", **overrides)
        db = Database(settings.database_url)
        for role, password in PASSWORDS.items():
            accounts.create_user(db=db, actor=Actor("system", "test"), username=role, password=password,
                                 role=role)
        runtime = Runtime(settings, db=db, pipeline=pipeline)
        stack = ExitStack()
        stack.callback(db.dispose)  # last out: after the server stopped and the runtime closed
        stack.callback(runtime.close)
        url = stack.enter_context(serve_in_thread(create_app(settings, runtime)))
        stops.append(stack.close)
        return LiveApi(url=url, settings=settings, db=db, runtime=runtime)

    yield start
    for stop in stops:
        stop()


@pytest.fixture(scope="session")
def api(start_api: Callable[..., LiveApi]) -> LiveApi:
    """The API most admin tests share (each test uses its own children)."""
    return start_api()


@pytest.fixture(scope="session")
def example(tmp_path_factory: pytest.TempPathFactory, pipeline: FacePipeline) -> ExampleDataset:
    return build_example_dataset(tmp_path_factory.mktemp("admin-example"), pipeline.detector)


def photo(example: ExampleDataset, name: str) -> bytes:
    return (example.images_dir / name).read_bytes()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def click(at: AppTest, label: str) -> AppTest:
    """Press the button with this label (form submit buttons have no key) and rerun."""
    matches = [b for b in at.button if b.label == label]
    assert matches, f"no button {label!r}; buttons: {[b.label for b in at.button]}"
    return matches[0].click().run()


def texts(at: AppTest) -> str:
    """Everything the page says in messages and markdown, for assertions on content."""
    parts = [e.value for kind in (at.success, at.error, at.warning, at.info, at.markdown, at.caption,
                                   at.title, at.header, at.subheader) for e in kind]
    return "\n".join(str(p) for p in parts)


@pytest.fixture
def signed_in(monkeypatch: pytest.MonkeyPatch) -> Callable[..., AppTest]:
    """An AppTest of the admin signed in to `live` as `role` (landing on the Children page)."""
    import admin_ui.config

    def sign_in(live: LiveApi, role: str = "admin") -> AppTest:
        monkeypatch.setattr(admin_ui.config, "API_URL", live.url)
        at = AppTest.from_file(str(ADMIN_APP), default_timeout=180).run()
        assert not at.exception, at.exception
        at.text_input(key="username").input(role)
        at.text_input(key="password").input(PASSWORDS[role])
        click(at, "Sign in")
        assert not at.exception, at.exception
        assert [t.value for t in at.title] == ["Children"], texts(at)
        return at

    return sign_in


def client(live: LiveApi, role: str = "admin"):  # noqa: ANN201 - admin_ui.client.Api, imported late
    """An authenticated HTTP client for setting up what a page needs (the admin's own client)."""
    from admin_ui.client import Api

    api = Api(live.url)
    api.token = api.post("/auth/login", json={"username": role, "password": PASSWORDS[role]})["access_token"]
    return api


def enroll(live: LiveApi, example: ExampleDataset, name: str, photos: list[str]) -> dict:
    """A child created and enrolled over HTTP, as another system would."""
    api = client(live)
    child = api.post("/children", json={"external_id": unique(name), "name": name})
    files = [("files", (p, photo(example, p))) for p in photos]
    result = api.post(f"/children/{child['id']}/images", files=files)
    assert result["enrolled"] == len(photos), result
    return child
