"""docker-compose.yml is a valid Compose file with the three services, healthchecks and named volumes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    has_plugin = (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    )
    if has_plugin:
        return ["docker", "compose"]
    pytest.skip("no Compose client here (docker-compose or the docker compose plugin) to parse the file")


def test_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        [*_compose_command(), "-f", str(REPO / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "POSTGRES_PASSWORD": "test-only"},
    )
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "api", "admin"}
    assert all("healthcheck" in service for service in services.values())
    assert {"pgdata", "childface-data"} <= set(config.get("volumes", {}))
    assert "childface serve" in " ".join(services["api"]["command"])
