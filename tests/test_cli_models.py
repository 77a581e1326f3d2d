"""`childface reembed` killed with SIGKILL mid-run and resumed; `models`, `switch-model`, `drop-model`.

The deployment: children enrolled from real photos with the default model; the target: a real ArcFace
network (MobileFaceNet) with seeded random weights. The run that is killed is the installed CLI in a
subprocess, as an operator runs it; the commands after it run in this process (Typer's runner) on the
same database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from api.support import Photos, photos, pipeline  # noqa: F401 - real models and photos, loaded once
from childface.cli import app
from childface.config import Settings, get_settings
from childface.db.models import Embedding, EmbeddingModel, Face, ReembedJob
from childface.services.runtime import Runtime
from services.models_support import enroll_children, save_arcface

CHILDFACE = str(Path(sys.executable).with_name("childface"))


@pytest.fixture
def deployment(settings: Settings, pipeline, photos: Photos, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN001, ANN201, F811
    """24 enrolled faces (6 children x 4 photos); CHILDFACE_* point this process's CLI at them."""
    rt = Runtime(settings, pipeline=pipeline)
    rt.start(autosave=False)
    enroll_children(rt, photos, people=6, per_child=4)
    rt.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env.update(CHILDFACE_DATABASE_URL=settings.database_url, CHILDFACE_MEDIA_DIR=str(settings.media_dir),
               CHILDFACE_INDEX_DIR=str(settings.resolved_index_dir), CHILDFACE_DEVICE="cpu")
    for name, value in env.items():
        if name.startswith("CHILDFACE_"):
            monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield rt, env
    get_settings.cache_clear()


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_reembed_killed_mid_run_resumes_then_switch_and_drop(
    deployment, photos: Photos, tmp_path: Path  # noqa: ANN001, F811
) -> None:
    rt, env = deployment
    weights = save_arcface(tmp_path / "backbone.pth")
    command = [CHILDFACE, "reembed", "--embedder", "arcface", "--weights", str(weights), "--arch", "mbf",
               "--no-flip", "--batch-size", "1", "--json"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:  # kill -9 once a few faces are done and most are not
            with rt.db.session() as session:
                job = session.scalar(select(ReembedJob))
            if job is not None and 3 <= job.done < job.total - 5:
                break
            assert process.poll() is None, f"reembed ended early: {process.communicate()}"
            assert time.monotonic() < deadline, "reembed too slow to start"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()
    with rt.db.session() as session:
        killed = session.scalar(select(ReembedJob))
        assert killed.status == "running" and 3 <= killed.done < 24

    code, out = cli(*command[1:])  # the same command again, in this process (no second start-up)
    assert code == 0, out
    report = json.loads(out[out.index("{"):])
    assert (report["status"], report["total"], report["done"], report["failed"]) == ("finished", 24, 24, 0)
    key = report["model_key"]
    with rt.db.session() as session:
        jobs = session.scalars(select(ReembedJob).order_by(ReembedJob.id)).all()
        assert [j.status for j in jobs] == ["failed", "finished"] and "no longer running" in jobs[0].error
        per_face = session.execute(
            select(Face.id, func.count(Embedding.id)).outerjoin(
                Embedding, (Embedding.face_id == Face.id) & (Embedding.model_id == jobs[0].model_id)
            ).group_by(Face.id)
        ).all()
    assert len(per_face) == 24 and {n for _, n in per_face} == {1}  # exactly one each: none twice, none lost

    code, out = cli("models", "--json")
    assert code == 0, out
    listed = {m["key"]: m for m in json.loads(out)}
    old = next(k for k, m in listed.items() if m["state"] == "current")
    assert listed[key]["coverage"] == 1.0 and listed[key]["spec"]["weights"] == "backbone.pth"

    # before switching: calibrate its gallery (thresholds kept with it), evaluate a labelled folder with it
    code, out = cli("calibrate", "--model", key, "--target-far", "0.01", "--apply-to-model", "--json")
    assert code == 0, out
    proposed = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert proposed["model_id"] == key and proposed["templates"] == 24
    with rt.db.session() as session:
        stored = session.scalar(select(EmbeddingModel.spec).where(EmbeddingModel.key == key))["thresholds"]
    assert stored == {"accept_threshold": proposed["proposed"]["accept"],
                      "review_threshold": proposed["proposed"]["review"]}
    for person in range(3):
        folder = tmp_path / "labelled" / f"p{person}"
        folder.mkdir(parents=True)
        for n in range(3):
            (folder / f"{n}.jpg").write_bytes(photos.person(person, 10 + n))
    code, out = cli("eval", str(tmp_path / "labelled"), "--model", key, "--enroll", "1", "--strangers", "0",
                    "--json")
    assert code == 0, out
    evaluated = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert evaluated["model_id"] == key and evaluated["thresholds"]["accept"] == stored["accept_threshold"]

    code, out = cli("switch-model", key, "--accept", "0.6", "--review", "0.4", "--json")
    assert code == 0, out
    assert json.loads(out)["before"] == old
    code, out = cli("switch-model", key)
    assert code == 3 and "already the current model" in out
    code, out = cli("switch-model", "nomodel:0000")
    assert code == 2 and "no embedding model" in out
    code, out = cli("drop-model", key)
    assert code == 3 and "is the current model" in out
    code, out = cli("drop-model", old, "--json")
    assert code == 0, out
    assert json.loads(out) == {"model": old, "deleted_embeddings": 24}
    with rt.db.session() as session:
        assert session.scalars(select(EmbeddingModel.key)).all() == [key]
