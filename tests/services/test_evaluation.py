"""`childface eval` on a folder built from real photos, verification statistics, `childface calibrate`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from childface.cli import app
from childface.config import Settings, get_settings
from childface.db import Database
from childface.services.evaluation import (
    EvaluationError,
    calibrate,
    calibration_page,
    evaluate,
    leave_out_probes,
    pick_strangers,
    report_lines,
    threshold_at_far,
    verification_stats,
    write_env_thresholds,
)
from childface.services.gallery import ensure_embedding_model

from .faces import add_child, add_face
from .photos import encode_png

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def model_settings(**changes: object) -> Settings:
    """The `pipeline` fixture's settings (no database needed), with these changes."""
    return Settings(_env_file=None, device="cpu").model_copy(update=changes)


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


def write_dataset(folder: Path, people, names: list[str], photos: list[int]) -> Path:  # noqa: ANN001
    """One sub-folder per person of these photos of the `people` fixture, as PNG files."""
    for name in names:
        (folder / name).mkdir(parents=True)
        for j in photos:
            (folder / name / f"{j}.png").write_bytes(encode_png(people[name][j]))
    return folder


def test_eval_command_on_a_folder_of_real_photos(tmp_path: Path, people, cli_env) -> None:  # noqa: ANN001
    dataset = write_dataset(tmp_path / "dataset", people, [f"t1_{i}" for i in range(6)], [0, 1, 2])
    (dataset / "t1_0" / "nothing.png").write_bytes(encode_png(np.full((200, 200, 3), 128, np.uint8)))
    runner = cli_env()
    result = runner.invoke(app, ["eval", str(dataset), "--strangers", "0", "--enroll", "1", "--json",
                                 "--plot", str(tmp_path / "eval.png")])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for key in ("rank1", "tar_at_far_1e-2", "tar_at_far_1e-3", "eer", "identities", "detection_failures"):
        assert key in report
    assert report["identities"] == 6 and report["probes"] == 12 and report["detection_failures"] == 1
    assert report["stranger_probes"] == 0 and report["held_out"]["people"] == []
    genuine = report["open_set"]["genuine"]
    assert report["rank1"] == 1.0 and genuine["wrong_match"] == 0 and genuine["probes"] == 12
    assert sum(genuine["counts"].values()) == 12
    assert genuine["correct_match"] == round(genuine["counts"]["correct_match"] / 12, 4)
    assert report["genuine_pairs"] == 18 and report["impostor_pairs"] == 135
    assert set(report["by_child_score"]) == {"max", "mean2"}
    assert (tmp_path / "eval.png").read_bytes().startswith(PNG_MAGIC)

    # the defaults: one person in five left out as a stranger, 1, 2, 3 and 5 templates per person
    result = runner.invoke(app, ["eval", str(dataset), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (stranger,) = [f"t1_{i}" for i in pick_strangers(6, 0.2)]
    said = "\n".join(report_lines(report))  # what the command prints without --json
    assert f"1 left out as strangers: {stranger}" in said
    assert "templates per person:" in said and "automatic templates" in said
    assert report["held_out"] == {"fraction": 0.2, "seed": 0, "people": [stranger]}
    assert report["stranger_probes"] == 3 and report["probes"] == 10  # five people, two probes each
    rows = report["by_templates"]
    assert [(row["enroll"], row["probes"]) for row in rows] == [(1, 10), (2, 5), (3, 0), (5, 0)]
    assert rows[2]["rank1"] is None and rows[0]["rank1"] == report["rank1"]
    strangers = report["open_set"]["strangers"]
    assert strangers["probes"] == 3 and sum(strangers["counts"].values()) == 3
    assert set(strangers["counts"]) == {"wrong_match", "review", "unknown"}

    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "p").mkdir()
    (tmp_path / "one" / "p" / "a.png").write_bytes(encode_png(people["t1_0"][0]))
    refused = runner.invoke(app, ["eval", str(tmp_path / "one")])
    assert refused.exit_code != 0 and "two sub-folders" in refused.output
    for options, message in ((["--strangers", "1"], "below 1"), (["--strangers", "0.9"], "at least two"),
                             (["--enroll", "2,x"], "whole numbers"), (["--enroll", "0"], "at least 1")):
        refused = runner.invoke(app, ["eval", str(dataset), *options])
        assert refused.exit_code != 0 and message in refused.output, (options, refused.output)


def test_example_dataset_writes_a_labelled_folder(tmp_path: Path, cli_env) -> None:  # noqa: ANN001
    result = cli_env().invoke(app, ["example-dataset", str(tmp_path / "ex"), "--eval-photos", "2"])
    assert result.exit_code == 0, result.output
    people = sorted(p for p in (tmp_path / "ex" / "people").iterdir())
    assert len(people) == 8 and "childface eval" in result.stdout
    photos = [sorted(person.glob("*.jpg")) for person in people]
    assert all(len(p) == 2 for p in photos)
    first, second = (Image.open(path) for path in photos[0])
    assert first.format == "JPEG" and first.size != second.size  # each photo framed its own way


def test_strangers_are_drawn_by_seed() -> None:
    assert pick_strangers(10, 0.2) == pick_strangers(10, 0.2, seed=0) and len(pick_strangers(10, 0.2)) == 2
    assert pick_strangers(10, 0.2, seed=1) != pick_strangers(10, 0.2, seed=0)
    assert pick_strangers(3, 0.0) == [] and len(pick_strangers(3, 0.01)) == 1  # any share leaves one out
    with pytest.raises(EvaluationError, match="at least two"):
        pick_strangers(2, 0.2)


def test_open_set_rates_follow_the_thresholds(tmp_path: Path, people, pipeline) -> None:  # noqa: ANN001
    """Decisions come from `identify` at the given settings: everything can be made a match or unknown."""
    names = ["t1_0", "t1_1", "t1_2", "astronaut", "tom_hanks"]
    dataset = write_dataset(tmp_path / "ds", people, names, [0, 3])
    loose = model_settings(accept_threshold=-1.0, review_threshold=-1.0, match_margin=0.0)
    report = evaluate(dataset, settings=loose, pipeline=pipeline, strangers=0.2, seed=3)
    assert report["stranger_probes"] == 2 and report["probes"] == 4
    assert report["open_set"]["strangers"]["wrong_match"] == 1.0  # a stranger always resembles someone most
    assert report["open_set"]["genuine"]["correct_match"] == report["rank1"] == 1.0
    strict = loose.model_copy(update={"accept_threshold": 1.0, "review_threshold": 1.0})
    report = evaluate(dataset, settings=strict, pipeline=pipeline, strangers=0.2, seed=3)
    assert report["open_set"]["genuine"]["unknown"] == report["open_set"]["strangers"]["unknown"] == 1.0
    assert report["rank1"] == 1.0  # the ranking does not depend on the thresholds


def test_auto_template_policies_are_replayed(tmp_path: Path, people, pipeline) -> None:  # noqa: ANN001
    names = ["t1_0", "t1_1", "t1_3", "t1_4", "astronaut"]
    dataset = write_dataset(tmp_path / "ds", people, names, [0, 2, 3, 4, 5])
    # every genuine probe goes to review: staff confirm it (both policies), strangers are dismissed
    reviewing = model_settings(
        accept_threshold=0.9999, review_threshold=0.5, auto_template_max_similarity=0.999,
        max_templates_per_child=3,
    )
    report = evaluate(dataset, settings=reviewing, pipeline=pipeline, strangers=0.2)
    auto = report["auto_templates"]
    assert auto["enroll"] == 1 and auto["configured"] == "confirmed" and auto["probes"] == 16 + 5
    for policy in ("confirmed", "confident"):
        sim = auto[policy]
        assert sim["genuine"]["review"] == 1.0 and sim["templates_added_to_wrong_child"] == 0
        not_added = sum(sim["not_added"].values())
        assert sim["templates_added"] + not_added == 16
        assert set(sim["not_added"]) <= {"low_quality", "template_cap"}
        assert sim["templates_added"] >= 8 and sim["templates_retired"] > 0  # a cap of 3: the oldest added go
    # every probe matches: 'confident' takes each match as a template, strangers' wrong ones too
    matching = model_settings(
        accept_threshold=0.0, review_threshold=0.0, match_margin=0.0, auto_template_min_excess=0.0,
        auto_template_min_margin=0.0, auto_template_max_similarity=1.0,
    )
    auto = evaluate(dataset, settings=matching, pipeline=pipeline, strangers=0.2)["auto_templates"]
    confirmed = auto["confirmed"]
    assert confirmed["templates_added"] == 0 and sum(confirmed["not_added"].values()) == 21
    assert set(confirmed["not_added"]) <= {"needs_confirmation", "low_quality"}
    confident = auto["confident"]
    assert confident["strangers"]["wrong_match"] == 1.0
    assert confident["templates_added_to_wrong_child"] >= 5 - confident["not_added"].get("low_quality", 0)


#: three photos a person: not the darkened copy (2) of the 112 px portrait, which in the flip TTA space
#: scores closer to another person than to his own photos (a suspect face, see test_calibration.py)
PHOTOS = [0, 1, 3]


def enroll_all(database: Database, pipeline, embeddings) -> None:  # noqa: ANN001
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
        for vector in vectors[PHOTOS]:
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


def test_calibrate_for_a_wrong_match_rate(
    database: Database, settings: Settings, pipeline, embeddings, cli_env  # noqa: ANN001
) -> None:
    enroll_all(database, pipeline, embeddings)
    report = calibrate(database, settings, target_wrong_match=0.05)
    report.pop("_scores")
    proposed, target = report["proposed"], report["wrong_match"]
    rates = proposed["open_set"]
    # every template is an impostor probe (its child left out) and a genuine one (itself left out)
    assert rates["impostor"]["probes"] == rates["genuine"]["probes"] == 24 and target["target"] == 0.05
    assert rates["impostor"]["wrong_match"] <= 0.05 and sum(rates["genuine"]["counts"].values()) == 24
    assert proposed["review"] == min(settings.review_threshold, proposed["accept"])
    assert target["current"]["genuine"]["probes"] == 24 and report["notes"] == []

    # the searches, checked against plain matrix arithmetic (child score: the best template)
    vectors = np.concatenate([v[PHOTOS] for v in embeddings.values()])
    labels = np.repeat(np.arange(len(embeddings)), len(PHOTOS))
    probes = leave_out_probes(vectors, labels, settings)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    same = labels[:, None] == labels[None, :]
    other_best = np.where(same, -np.inf, sims).max(axis=1)
    np.testing.assert_allclose(sorted(r.score for r in probes.impostor), sorted(other_best), atol=1e-5)
    best = {(child, round(r.score, 5)) for child, r in probes.genuine}
    assert best == {(int(c), round(float(s), 5)) for c, s in zip(labels, sims.max(axis=1), strict=True)}
    at = settings.model_copy(
        update={"accept_threshold": proposed["accept"], "review_threshold": proposed["review"]}
    )
    assert probes.rates(at) == rates
    # the lowest such threshold: a step below it, more impostor probes than the target end in a match
    below = at.model_copy(update={"accept_threshold": proposed["accept"] - 1e-4})
    assert probes.rates(below)["impostor"]["wrong_match"] > 0.05

    runner = cli_env(CHILDFACE_DATABASE_URL=settings.database_url)
    result = runner.invoke(app, ["calibrate", "--target-wrong-match", "0.05", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["proposed"] == proposed
    result = runner.invoke(app, ["calibrate", "--target-wrong-match", "0.05"])
    assert "wrong match at most 0.05" in result.stdout and "genuine probes (24)" in result.stdout
    refused = runner.invoke(app, ["calibrate", "--target-wrong-match", "1.5"])
    assert refused.exit_code != 0 and "wrong-match rate" in refused.output


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
