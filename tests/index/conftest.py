"""Helpers for the vector-index tests: random unit vectors and a brute-force oracle."""

from __future__ import annotations

import uuid

import numpy as np
import pytest


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_force(
    ids: np.ndarray, gallery: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The oracle: full sort of `queries @ gallery.T` (k <= len(gallery))."""
    sims = queries @ gallery.T
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return ids[order], np.take_along_axis(sims, order, axis=1)


@pytest.fixture(scope="session")
def gallery() -> tuple[np.ndarray, np.ndarray]:
    """2,000 random 32-d unit vectors with sparse, non-contiguous face ids."""
    vectors = unit_vectors(2000, 32, seed=1)
    ids = np.arange(2000, dtype=np.int64) * 3 + 10
    return ids, vectors


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One Milvus Lite data path for the whole run (starting Lite costs ~0.5 s); tests keep apart
    by collection prefix (`milvus_prefix`)."""
    return str(tmp_path_factory.mktemp("milvus") / "milvus.db")


@pytest.fixture
def milvus_prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}_"
