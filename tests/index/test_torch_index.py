"""TorchExactIndex (matmul + top-k) agrees with FAISS exact search; the CUDA run skips without a GPU."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch

from childface.config import Settings
from childface.index import FaissIndex, TorchExactIndex, create_index

from .conftest import unit_vectors

DIM = 32


def exact_pair(gallery, device: str) -> tuple[TorchExactIndex, FaissIndex]:
    ids, vectors = gallery
    torch_index = TorchExactIndex("m", DIM, device=device)
    faiss_index = FaissIndex("m", DIM, approximate_above=10**9)
    for index in (torch_index, faiss_index):
        index.add(ids, vectors)
        index.remove(ids[5::11])
        index.add(ids[:20], unit_vectors(20, DIM, seed=8))  # replacements
    return torch_index, faiss_index


def assert_same_results(a, b, queries: np.ndarray, k: int) -> None:
    ids_a, sims_a = a.search(queries, k)
    ids_b, sims_b = b.search(queries, k)
    np.testing.assert_allclose(sims_a, sims_b, atol=1e-5)
    np.testing.assert_array_equal(ids_a, ids_b)


def test_torch_cpu_equals_faiss_exact(gallery):
    torch_index, faiss_index = exact_pair(gallery, "cpu")
    assert torch_index.count == faiss_index.count
    np.testing.assert_array_equal(torch_index.ids(), faiss_index.ids())
    assert_same_results(torch_index, faiss_index, unit_vectors(64, DIM, seed=9), 10)


@pytest.mark.gpu
def test_torch_cuda_equals_faiss_exact(gallery):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    torch_index, faiss_index = exact_pair(gallery, "cuda")
    assert torch_index.device.type == "cuda"
    assert_same_results(torch_index, faiss_index, unit_vectors(300, DIM, seed=10), 10)
    assert isinstance(create_index(Settings(device="cuda"), "m", DIM), (TorchExactIndex, FaissIndex))


@pytest.mark.gpu
def test_faiss_gpu_flat_equals_cpu(gallery):
    if faiss.get_num_gpus() == 0:
        pytest.skip("faiss-gpu is not installed or sees no GPU")
    ids, vectors = gallery
    gpu_index = create_index(Settings(device="cuda"), "m", DIM)
    assert isinstance(gpu_index, FaissIndex) and gpu_index.gpu_device == 0
    cpu_index = FaissIndex("m", DIM, approximate_above=10**9)
    for index in (gpu_index, cpu_index):
        index.add(ids, vectors)
        index.remove(ids[::3])
    assert_same_results(gpu_index, cpu_index, unit_vectors(50, DIM, seed=11), 10)
