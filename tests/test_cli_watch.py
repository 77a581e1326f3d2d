"""`childface watch` arguments and config files (YAML, TOML): sources, names, mistakes named clearly.

The command's run itself (models, database, a killed and restarted process) is
tested in tests/services/test_watch.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from childface.bench.clips import write_clip
from childface.cli import app


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = Path(tmp_path_factory.mktemp("cli-watch")) / "door.avi"
    write_clip([np.zeros((48, 64, 3), np.uint8)] * 3, path, fps=5)
    return path


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["watch", *args])
    return result.exit_code, result.output


def test_config_files_in_yaml_and_toml_give_the_same_sources(tmp_path: Path, video: Path) -> None:
    from childface.cli.watch import collect_sources, read_config

    yaml_file = tmp_path / "cameras.yaml"
    yaml_file.write_text(f"stride: 2\nsources:\n  - name: front-door\n    uri: {video}\n    loop: true\n"
                         "  - name: hall\n    uri: rtsp://10.0.0.5/live\n  - uri: 0\n")
    toml_file = tmp_path / "cameras.toml"
    toml_file.write_text(f'stride = 2\n[[sources]]\nname = "front-door"\nuri = "{video}"\nloop = true\n'
                         '[[sources]]\nname = "hall"\nuri = "rtsp://10.0.0.5/live"\n[[sources]]\nuri = 0\n')
    for path in (yaml_file, toml_file):
        config = read_config(path)
        assert config["stride"] == 2
        specs = collect_sources([], [], config, loop=False)
        assert [(s.name, s.kind, s.loop) for s in specs] == [
            ("front-door", "file", True), ("hall", "stream", False), ("webcam-0", "webcam", False)
        ]


def test_arguments_and_named_sources_combine(video: Path) -> None:
    from childface.cli.watch import collect_sources

    specs = collect_sources([str(video)], ["gate=http://127.0.0.1:8080/video.mjpg"], {}, loop=True)
    assert [(s.name, s.kind, s.loop) for s in specs] == [("door", "file", True), ("gate", "stream", False)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give at least one source"),
        (("--source", "no-equals-sign"), "NAME=URI"),
        (("--source", "a=0", "--source", "a=1"), "source names must differ"),
        (("/no/such/file.mp4",), "video file not found"),
        (("--source", "bad name=0"), "source name"),
        (("--config", "cameras.ini"), "cannot read"),
        (("0", "--log-level", "loud"), "--log-level"),
    ],
)
def test_mistakes_exit_2_with_a_reason(args: tuple[str, ...], message: str) -> None:
    code, output = _run(*args)
    assert code == 2 and message in output, output


def test_bad_config_files_are_refused(tmp_path: Path) -> None:
    cases = {
        "a.yaml": ("sources: [ {name: x", "not valid"),
        "b.yaml": ("cameras: []\n", "unknown keys ['cameras']"),
        "c.toml": ('[[sources]]\nname = "x"\n', "needs a 'uri'"),
        "d.json": ("{}", "must end in .yaml, .yml or .toml"),
        "e.yaml": ("sources:\n  - {uri: 0, fps: 3}\n", "unknown keys ['fps']"),
        "f.yaml": ("stride: 0\nsources: [{uri: 0}]\n", "stride must be at least 1"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        code, output = _run("--config", str(tmp_path / name))
        assert code == 2 and message in output, (name, output)
