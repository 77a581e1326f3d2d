"""The embedder registry and the contract every embedder keeps (base.Embedder)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from childface.config import Settings
from childface.vision import arcface
from childface.vision.alignment import ARCFACE_TEMPLATE_112
from childface.vision.dlib_format import default_descriptor_path
from childface.vision.embedders import load_embedder, unload_embedders
from childface.vision.embedders.arcface import ArcFaceEmbedder
from childface.vision.embedders.dlib_resnet import DLIB_TEMPLATE_150, DlibResNetEmbedder
from childface.vision.weights import sha256_file


@pytest.fixture()
def registry():
    unload_embedders()
    yield load_embedder
    unload_embedders()


@pytest.fixture(scope="module")
def r18_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("arcface") / "backbone.pth"
    torch.save(arcface.get_backbone("r18").state_dict(), path)
    return path


def _settings(base: Settings, **changes: object) -> Settings:
    return base.model_copy(update=changes)


def test_default_is_dlib_and_cached(registry, settings_cpu: Settings) -> None:
    plain = _settings(settings_cpu, embedder_flip_tta=False)  # the flip wrapper: test_flip.py
    embedder = registry(plain)
    assert isinstance(embedder, DlibResNetEmbedder)
    assert registry(settings_cpu).inner is embedder  # the default wraps it
    assert registry(plain) is embedder
    assert embedder.weights_sha256 == sha256_file(default_descriptor_path())
    assert embedder.model_id == f"dlib-resnet:{embedder.weights_sha256[:16]}"
    assert embedder.device == torch.device("cpu")
    np.testing.assert_array_equal(embedder.template, DLIB_TEMPLATE_150)
    assert embedder.template.shape == (5, 2) and embedder.template.dtype == np.float32
    unload_embedders()
    assert registry(plain) is not embedder


def test_arcface_needs_weights(registry, settings_cpu: Settings, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CHILDFACE_EMBEDDER_WEIGHTS"):
        registry(_settings(settings_cpu, embedder="arcface"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        registry(_settings(settings_cpu, embedder="arcface", embedder_weights=tmp_path / "missing.pth"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"\.pth or an \.onnx"):
        registry(_settings(settings_cpu, embedder="arcface", embedder_weights=tmp_path / "weights.bin"))


def test_arcface_from_checkpoint(registry, settings_cpu: Settings, r18_checkpoint: Path) -> None:
    settings = _settings(
        settings_cpu, embedder="arcface", embedder_weights=r18_checkpoint, embedder_arch="r18",
        embedder_flip_tta=False,
    )
    embedder = registry(settings)
    assert isinstance(embedder, ArcFaceEmbedder)
    flipped = registry(_settings(settings, embedder_flip_tta=True))  # flip TTA wraps every embedder
    assert flipped.inner is embedder and flipped.model_id == embedder.model_id.replace(":", "+flip:")
    assert registry(settings) is embedder
    assert embedder.name == "arcface-r18" and embedder.dim == 512 and embedder.chip_size == 112
    assert embedder.model_id == f"arcface-r18:{sha256_file(r18_checkpoint)[:16]}"
    np.testing.assert_array_equal(embedder.template, ARCFACE_TEMPLATE_112)
    chips = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    out = embedder.embed_numpy(chips)
    assert out.shape == (3, 512) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # the preprocessing contract: (x / 255 - 0.5) / 0.5 into the backbone, then L2 norm
    with torch.inference_mode():
        x = torch.from_numpy(chips).permute(0, 3, 1, 2).float()
        raw = arcface.load_checkpoint(r18_checkpoint, "r18")((x / 255 - 0.5) / 0.5)
    np.testing.assert_allclose(out, torch.nn.functional.normalize(raw, dim=1).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="112"):
        embedder.embed(torch.zeros((1, 3, 150, 150), dtype=torch.uint8))


def test_arcface_from_onnx_names_its_arch(registry, settings_cpu: Settings, tmp_path: Path) -> None:
    path = tmp_path / "w600k_mbf.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            arcface.get_backbone("mbf").eval(), (torch.zeros(1, 3, 112, 112),), str(path), dynamo=False
        )
    # the graph says mbf: the arch setting (default r50) is for .pth checkpoints only
    embedder = registry(_settings(settings_cpu, embedder="arcface", embedder_weights=path))
    assert embedder.name == "arcface-mbf+flip"  # the default wraps it in flip TTA
    assert embedder.embed(torch.zeros((2, 3, 112, 112), dtype=torch.uint8)).shape == (2, 512)


@pytest.mark.gpu
def test_registry_on_cuda(registry, settings_cpu: Settings) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    embedder = registry(_settings(settings_cpu, device="cuda"))
    out = embedder.embed(torch.zeros((4, 3, 150, 150), dtype=torch.uint8, device="cuda"))
    assert out.device.type == "cuda" and out.dtype == torch.float32 and out.shape == (4, 128)
