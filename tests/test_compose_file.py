"""docker-compose.yml is a valid Compose file with the three services, healthchecks and named volumes,
and a milvus profile that adds Milvus standalone (etcd, MinIO) and points the API at it."""

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
    # Compose v1 lists the profiled services too, v2 only the active profiles'
    assert {name for name, service in services.items() if not service.get("profiles")} == {
        "postgres",
        "api",
        "admin",
    }
    assert all("healthcheck" in service for service in services.values())
    assert {"pgdata", "childface-data"} <= set(config.get("volumes", {}))
    assert "childface serve" in " ".join(services["api"]["command"])


def test_milvus_profile_adds_milvus_standalone_and_points_the_api_at_it() -> None:
    """Read as YAML (no Compose client needed): the profile's services and how the API reaches them."""
    config = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = config["services"]
    profiled = {name for name, service in services.items() if "milvus" in service.get("profiles", [])}
    assert profiled == {"milvus", "etcd", "minio"}
    assert all("profiles" not in services[name] for name in ("postgres", "api", "admin"))
    milvus = services["milvus"]
    assert milvus["command"] == ["milvus", "run", "standalone"]
    assert milvus["environment"]["ETCD_ENDPOINTS"] == "etcd:2379"
    assert milvus["environment"]["MINIO_ADDRESS"] == "minio:9000"
    assert set(milvus["depends_on"]) == {"etcd", "minio"}
    assert all("healthcheck" in services[name] for name in profiled)
    api_env = services["api"]["environment"]
    assert api_env["CHILDFACE_MILVUS_URI"] == "http://milvus:19530"
    assert api_env["CHILDFACE_INDEX_BACKEND"] == "${CHILDFACE_INDEX_BACKEND:-faiss}"
    # no depends_on Milvus (absent without the profile): the API restarts until Milvus is up
    assert "milvus" not in services["api"]["depends_on"] and services["api"]["restart"] == "on-failure"
    assert {"etcd-data", "minio-data", "milvus-data"} <= set(config["volumes"])
    # the image has the client: the API imports pymilvus only on this backend
    assert "milvus" in (REPO / "Dockerfile").read_text().split("pip install -e")[-1].split("\n")[0]


def test_compose_config_with_the_milvus_profile() -> None:
    result = subprocess.run(
        [*_compose_command(), "-f", str(REPO / "docker-compose.yml"), "--profile", "milvus", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "POSTGRES_PASSWORD": "test-only", "CHILDFACE_INDEX_BACKEND": "milvus"},
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"milvus", "etcd", "minio", "api"} <= set(services)
    assert services["api"]["environment"]["CHILDFACE_INDEX_BACKEND"] == "milvus"


def test_the_watcher_keeps_its_index_snapshots_apart_from_the_api() -> None:
    """Both share the data volume; snapshots in one folder would let an older watcher snapshot overwrite
    the one the API scrubbed after an erasure."""
    result = subprocess.run(
        [*_compose_command(), "-f", str(REPO / "docker-compose.yml"), "--profile", "watch", "config"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "POSTGRES_PASSWORD": "test-only"},
    )
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    api, watch = services["api"]["environment"], services["watch"]["environment"]
    assert watch["CHILDFACE_INDEX_DIR"] != api["CHILDFACE_INDEX_DIR"]
    # everything else is the API's: the same database, media and index backend
    assert {k: v for k, v in watch.items() if k != "CHILDFACE_INDEX_DIR"} == {
        k: v for k, v in api.items() if k != "CHILDFACE_INDEX_DIR"
    }
