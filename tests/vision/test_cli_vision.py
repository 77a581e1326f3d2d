"""`childface detect / embed / bench pipeline`, run as a user runs them: the installed CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

CHILDFACE = str(Path(sys.executable).with_name("childface"))


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHILDFACE_")}
    env.update(CHILDFACE_DEVICE="cpu", CHILDFACE_MEDIA_DIR=str(tmp_path / "media"))
    return env


def run_cli(*args: str, env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run([CHILDFACE, *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_detect_json_and_draw(cli_env, group_photo, mask_photos, tmp_path):
    out = tmp_path / "drawn.png"
    result = run_cli("detect", str(group_photo.path), "--json", "--draw", str(out), env=cli_env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report) == 1 and report[0]["image"] == str(group_photo.path)
    faces = report[0]["faces"]
    assert len(faces) == 6
    for face in faces:
        assert len(face["box"]) == 4 and len(face["landmarks"]) == 5 and face["score"] >= 0.9
        assert face["quality"]["passed"] is True and "embedding" not in face
    drawn = cv2.imread(str(out))
    assert drawn is not None and drawn.shape == group_photo.rgb.shape
    assert f"-> {out}" in result.stderr  # with --json, the note about the drawing goes to stderr

    both = run_cli("detect", str(group_photo.path), str(mask_photos[0].path), "--draw", str(out), env=cli_env)
    assert both.returncode == 0, both.stderr
    assert "6 face(s)" in both.stdout and "0 face(s)" in both.stdout
    for n, photo in enumerate((group_photo, mask_photos[0]), start=1):
        target = tmp_path / f"drawn_{n}.png"
        assert cv2.imread(str(target)).shape == photo.rgb.shape
        assert f"{photo.path} -> {target}" in both.stdout


def test_embed_json(cli_env, portrait):
    result = run_cli("embed", str(portrait.path), "--json", env=cli_env)
    assert result.returncode == 0, result.stderr
    (image,) = json.loads(result.stdout)
    (face,) = image["faces"]
    vector = face["embedding"]
    assert len(vector) == 128 and abs(sum(v * v for v in vector) - 1) < 1e-4


def test_not_an_image_is_a_clear_error(cli_env, tmp_path):
    bogus = tmp_path / "photo.jpg"
    bogus.write_bytes(b"this is not a photo")
    result = run_cli("detect", str(bogus), env=cli_env)
    assert result.returncode == 2
    assert "not_an_image" in result.stderr and "Traceback" not in result.stderr


def test_bench_pipeline_json(cli_env):
    result = run_cli("bench", "pipeline", "--repeat", "1", "--json", env=cli_env, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("speedup_vs_dlib", "mean_cosine_vs_dlib", "ours", "dlib", "images", "load_average_before",
                "load_average_after"):
        assert key in report, key
    for side in ("ours", "dlib"):
        assert set(report[side]) >= {"images_per_s", "faces_per_s", "p50_ms", "p95_ms"}
    # figures, not a timed test: on a shared machine wall-clock ratios swing with other processes
    assert report["speedup_vs_dlib"] > 0 and report["ours"]["p50_ms"] > 0
    assert report["mean_cosine_vs_dlib"] > 0.9 and report["matched_faces"] == 7
    assert [row["ours_faces"] for row in report["images"]] == [6, 1]
    assert report["background_load"] is False and len(report["load_average_after"]) == 3
    # flip TTA's cost, both variants in the same run; the dlib ratio and cosine compare the plain one
    flip = report["flip"]
    assert flip["configured"] is True and report["embedder"] == flip["embedder_with"]
    assert flip["embedder_with"].startswith("dlib-resnet+flip:")
    assert flip["embedder_without"].startswith("dlib-resnet:")
    assert flip["ms_per_face_with"] > 0 and flip["ms_per_face_without"] > 0 and flip["embed_faces"] == 7
    assert flip["embed_ms_per_face_with"] > 0 and flip["embed_ms_per_face_without"] > 0
    assert "without flip" in report["speedup_vs_dlib_variant"] and report["speedup_vs_dlib_with_flip"] > 0


@pytest.mark.slow
def test_bench_pipeline_beside_a_cpu_hog(cli_env, tmp_path):
    """~10 s: one small photo, one timed pass, a busy process on every core beside it."""
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "astronaut.jpg"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    result = run_cli(
        "bench", "pipeline", "--images", str(folder), "--repeat", "1", "--background-load", "--json",
        env=cli_env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["background_load"] is True and report["speedup_vs_dlib"] > 0
    assert report["matched_faces"] == 1 and report["mean_cosine_vs_dlib"] > 0.9
