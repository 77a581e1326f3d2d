"""`childface eval` on a folder built from real photos, verification statistics, `childface calibrate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from childface.cli import app
from childface.config import Settings, get_settings
from childface.db import Database
from childface.services.evaluation import (
    EvaluationError,
    calibrate,
    calibration_page,
    threshold_at_far,
    verification_stats,
    write_env_thresholds,
)
from childface.services.gallery import ensure_embedding_model

from .faces import add_child, add_face
from .photos import encode_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # noqa: ANN201
    """Run CLI commands in-process with settings from these environment variables, in tmp_path."""
    monkeypatch.chdir(tmp_path)

    def configure(**values: str) -> CliRunner:
        for name, value in {"CHILDFACE_DEVICE": "cpu", **values}.items():
            monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        return CliRunner()

    yield configure
    get_settings.cache_clear()


def test_verification_stats_on_known_scores() -> None:
    impostor = np.linspace(0.0, 0.999, 1000).astype(np.float32)  # 1000 pairs, the top ten above 0.989
    genuine = np.array([0.5, 0.995, 0.9995, 1.0], dtype=np.float32)
    assert np.mean(impostor >= threshold_at_far(impostor, 1e-2)) <= 1e-2
    assert np.mean(impostor >= threshold_at_far(impostor, 1e-3)) <= 1e-3
    stats = verification_stats(genuine, impostor)
    assert stats["tar_at_far_1e-2"] == 0.75 and stats["tar_at_far_1e-3"] == 0.5
    assert 0.998 < stats["threshold_at_far_1e-3"] <= 0.999  # one impostor of 1000 (0.999) may pass
    assert 0.2 < stats["eer"] < 0.3 and stats["genuine_pairs"] == 4 and stats["impostor_pairs"] == 1000


def test_eval_command_on_a_folder_of_real_photos(tmp_path: Path, people, cli_env) -> None:  # noqa: ANN001
    dataset = tmp_path / "dataset"
    for name in [f"t1_{i}" for i in range(6)]:
        (dataset / name).mkdir(parents=True)
        for j, photo in enumerate(people[name][:3]):
            (dataset / name / f"{j}.png").write_bytes(encode_png(photo))
    (dataset / "t1_0" / "nothing.png").write_bytes(encode_png(np.full((200, 200, 3), 128, np.uint8)))
    runner = cli_env()
    result = runner.invoke(app, ["eval", str(dataset), "--json", "--plot", str(tmp_path / "eval.png")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in (
        "rank1",
        "tar_at_far_1e-2",
        "tar_at_far_1e-3",
        "eer",
        "identities",
        "probes",
        "detection_failures",
    ):
        assert key in report
    assert report["identities"] == 6 and report["probes"] == 12 and report["detection_failures"] == 1
    assert report["rank1"] == 1.0 and report["open_set"]["wrong_match"] == 0
    assert report["genuine_pairs"] == 18 and report["impostor_pairs"] == 135
    assert set(report["by_child_score"]) == {"max", "mean2"}
    assert (tmp_path / "eval.png").read_bytes().startswith(PNG_MAGIC)

    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "p").mkdir()
    (tmp_path / "one" / "p" / "a.png").write_bytes(encode_png(people["t1_0"][0]))
    refused = runner.invoke(app, ["eval", str(tmp_path / "one")])
    assert refused.exit_code != 0 and "two sub-folders" in refused.output


def enroll_all(database: Database, pipeline, embeddings, per_person: int = 3) -> None:  # noqa: ANN001
    embedder = pipeline.embedder
    model_row = ensure_embedding_model(
        database,
        key=pipeline.model_id,
        name=embedder.name,
        weights_sha256=embedder.weights_sha256,
        dim=embedder.dim,
    )
    for name, vectors in embeddings.items():
        child = add_child(database, name)
        for vector in vectors[:per_person]:
            add_face(database, child_id=child, model_row=model_row, vector=vector)


def test_calibrate_proposes_and_changes_nothing(
    database: Database, settings: Settings, pipeline, embeddings, cli_env, tmp_path: Path
) -> None:  # noqa: ANN001
    with pytest.raises(EvaluationError, match="empty"):
        calibrate(database, settings)
    enroll_all(database, pipeline, embeddings)
    report = calibrate(database, settings, target_far=1e-2)
    genuine, impostor = report.pop("_scores")
    assert report["children"] == 8 and report["templates"] == 24
    assert report["genuine_pairs"] == 24 and report["impostor_pairs"] == 252
    proposed = report["proposed"]
    assert np.mean(impostor >= proposed["accept"]) <= 1e-2
    assert proposed["review"] <= proposed["accept"] and proposed["tar_at_accept"] > 0.9
    assert report["notes"] == []  # 252 pairs resolve a FAR of 1e-2
    stats, png = calibration_page(database, settings, target_far=1e-3)
    assert png.startswith(PNG_MAGIC) and stats["notes"]  # 1e-3 cannot be resolved with 252 pairs

    runner = cli_env(CHILDFACE_DATABASE_URL=settings.database_url)
    result = runner.invoke(app, ["calibrate", "--target-far", "0.01", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["proposed"] == proposed
    assert "nothing changed" in result.stderr and not (tmp_path / ".env").exists()

    (tmp_path / ".env").write_text("CHILDFACE_TOP_K=3\nCHILDFACE_ACCEPT_THRESHOLD=0.5\n")
    result = runner.invoke(app, ["calibrate", "--target-far", "0.01", "--apply"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / ".env").read_text().splitlines()
    assert lines == [
        "CHILDFACE_TOP_K=3",
        f"CHILDFACE_ACCEPT_THRESHOLD={proposed['accept']:.4f}",
        f"CHILDFACE_REVIEW_THRESHOLD={proposed['review']:.4f}",
    ]
    get_settings.cache_clear()
    assert get_settings().accept_threshold == pytest.approx(proposed["accept"], abs=1e-4)


def test_write_env_thresholds_keeps_other_lines(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    write_env_thresholds(env, accept=0.95, review=0.9)
    assert env.read_text() == "CHILDFACE_ACCEPT_THRESHOLD=0.9500\nCHILDFACE_REVIEW_THRESHOLD=0.9000\n"
    env.write_text("# mine\nexport CHILDFACE_REVIEW_THRESHOLD=0.1\nOTHER=1\n")
    write_env_thresholds(env, accept=0.96, review=0.91)
    assert env.read_text().splitlines() == [
        "# mine",
        "CHILDFACE_REVIEW_THRESHOLD=0.9100",
        "OTHER=1",
        "CHILDFACE_ACCEPT_THRESHOLD=0.9600",
    ]
