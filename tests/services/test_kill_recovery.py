"""DESIGN.md invariant 3: kill -9 in the middle of enrolling, restart, the index equals the DB."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from childface.config import Settings
from childface.db import Database
from childface.db.models import Face
from childface.services.gallery import Gallery

from .conftest import MODEL_KEY
from .faces import DIM, TEST_ACTOR

SCRIPT = Path(__file__).with_name("kill_enroller.py")


def run_until_saved(settings: Settings, saves: int) -> None:
    """Start the enroller, let it save `saves` snapshots and work on a moment more, then SIGKILL it."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), settings.database_url, str(settings.resolved_index_dir), MODEL_KEY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen = 0
        deadline = time.monotonic() + 120
        while seen < saves:
            line = process.stdout.readline()
            if not line:
                pytest.fail(f"enroller exited early ({process.wait()}): {process.stderr.read()[-2000:]}")
            seen += line.startswith("saved ")
            assert time.monotonic() < deadline, "enroller too slow"
        time.sleep(0.37)  # land somewhere in the middle of the next steps
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.stderr.close()


@pytest.mark.slow
def test_kill_9_mid_enrolment_then_restart_is_clean(database: Database, settings: Settings) -> None:
    for saves in (3, 6):  # twice: the second run starts from the first run's snapshot
        run_until_saved(settings, saves)
        gallery = Gallery(db=database, settings=settings, model_key=MODEL_KEY, dim=DIM)
        assert gallery.start().startswith("loaded snapshot")
        differences = gallery.check()
        assert differences.clean, differences.summary()
        assert differences.db_count > 0

    environment = {
        **os.environ,
        "CHILDFACE_DATABASE_URL": settings.database_url,
        "CHILDFACE_MEDIA_DIR": str(settings.media_dir),
        "CHILDFACE_INDEX_DIR": str(settings.resolved_index_dir),
        "CHILDFACE_DEVICE": "cpu",
    }
    cli = [sys.executable, "-m", "childface.cli", "reindex", "--check"]
    result = subprocess.run(
        cli, env=environment, capture_output=True, text=True, timeout=120, cwd=settings.media_dir.parent
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "loaded snapshot" in result.stdout and "index equals the DB" in result.stdout

    # a face deleted behind the change feed's back: --check must say so and exit 1
    with database.unit_of_work(TEST_ACTOR) as uow:
        face = uow.session.scalars(
            select(Face).where(Face.id.in_(gallery._children.index.ids().tolist()))
        ).first()
        uow.session.delete(face.image)
        uow.audit("face.remove", target_type="face", target_id=face.id)
    result = subprocess.run(
        cli, env=environment, capture_output=True, text=True, timeout=120, cwd=settings.media_dir.parent
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"extra in the index: {face.id}" in result.stdout
