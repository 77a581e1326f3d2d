"""Flip test-time augmentation (`FlipEmbedder`) on real aligned chips: the contract, the identity,
the registry, and what mirroring does to a face's embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from childface.config import Settings
from childface.vision.embedders import load_embedder, unload_embedders
from childface.vision.embedders.base import Embedder
from childface.vision.embedders.dlib_resnet import DlibResNetEmbedder
from childface.vision.embedders.flip import FlipEmbedder


class CountingEmbedder(Embedder):
    """A real embedder that counts the calls and chips it is given."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name, self.dim, self.chip_size = inner.name, inner.dim, inner.chip_size
        self.weights_sha256, self.device = inner.weights_sha256, inner.device
        self.calls: list[int] = []

    @property
    def template(self) -> np.ndarray:
        return self.inner.template

    def embed(self, chips: torch.Tensor) -> torch.Tensor:
        self.calls.append(chips.shape[0])
        return self.inner.embed(chips)


@pytest.fixture(scope="module")
def plain() -> DlibResNetEmbedder:
    return DlibResNetEmbedder(device="cpu")


@pytest.fixture(scope="module")
def chips(pipeline_cpu, group_photo, portrait, astronaut) -> np.ndarray:  # noqa: ANN001
    """Eight real aligned 150 px chips (N, S, S, 3): t1.jpg's six faces, the portrait, the astronaut."""
    photos = (group_photo, portrait, astronaut)
    faces = [f for photo in photos for f in pipeline_cpu.detect_only([photo.data])[0]]
    assert len(faces) == 8
    return np.stack([f.chip for f in faces])


def test_mean_of_the_chip_and_its_mirror(plain: DlibResNetEmbedder, chips: np.ndarray) -> None:
    flip = FlipEmbedder(plain)
    out = flip.embed_numpy(chips)
    assert out.shape == (len(chips), 128) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # computed separately: the plain embedding of each chip and of the chip mirrored left-right
    mean = plain.embed_numpy(chips) + plain.embed_numpy(np.ascontiguousarray(chips[:, :, ::-1]))
    np.testing.assert_allclose(out, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-5)


def test_one_inner_call_on_both_halves(plain: DlibResNetEmbedder, chips: np.ndarray) -> None:
    counting = CountingEmbedder(plain)
    FlipEmbedder(counting).embed_numpy(chips)
    assert counting.calls == [2 * len(chips)]
    empty = FlipEmbedder(plain).embed(torch.zeros((0, 3, 150, 150), dtype=torch.uint8))
    assert tuple(empty.shape) == (0, 128)
    with pytest.raises(ValueError, match="150"):
        FlipEmbedder(plain).embed(torch.zeros((1, 3, 112, 112), dtype=torch.uint8))


def test_identity_is_its_own_space(plain: DlibResNetEmbedder) -> None:
    flip = FlipEmbedder(plain)
    assert flip.name == "dlib-resnet+flip"
    assert flip.model_id == f"dlib-resnet+flip:{plain.weights_sha256[:16]}" != plain.model_id
    assert (flip.dim, flip.chip_size, flip.weights_sha256, flip.device) == (
        plain.dim, plain.chip_size, plain.weights_sha256, plain.device
    )
    np.testing.assert_array_equal(flip.template, plain.template)


def test_a_mirrored_chip_embeds_as_the_original(plain: DlibResNetEmbedder, chips: np.ndarray) -> None:
    mirrored = np.ascontiguousarray(chips[:, :, ::-1])
    flip = FlipEmbedder(plain)
    with_flip = np.einsum("ij,ij->i", flip.embed_numpy(chips), flip.embed_numpy(mirrored))
    without = np.einsum("ij,ij->i", plain.embed_numpy(chips), plain.embed_numpy(mirrored))
    # the same two chips in the other order: equal up to float rounding
    assert with_flip.min() > 0.99999
    # while the plain descriptor of a mirrored face moves (measured here: mean 0.989, min 0.983)
    assert without.mean() < 0.995 and with_flip.min() > without.max()


def test_registry_wraps_by_the_setting(settings_cpu: Settings) -> None:
    unload_embedders()
    try:
        assert settings_cpu.embedder_flip_tta  # the default
        flipped = load_embedder(settings_cpu)
        plain_one = load_embedder(settings_cpu.model_copy(update={"embedder_flip_tta": False}))
        assert isinstance(flipped, FlipEmbedder) and isinstance(plain_one, DlibResNetEmbedder)
        assert flipped.inner is plain_one  # one copy of the weights
        assert load_embedder(settings_cpu) is flipped
        assert flipped.model_id == plain_one.model_id.replace("dlib-resnet:", "dlib-resnet+flip:")
    finally:
        unload_embedders()


def test_pipeline_follows_the_setting(settings_cpu: Settings, pipeline_cpu, portrait) -> None:  # noqa: ANN001
    from childface.vision.pipeline import FacePipeline

    plain_pipeline = FacePipeline.from_settings(settings_cpu.model_copy(update={"embedder_flip_tta": False}))
    assert pipeline_cpu.model_id.startswith("dlib-resnet+flip:")
    assert plain_pipeline.model_id.startswith("dlib-resnet:")
    ((a,),), ((b,),) = pipeline_cpu.process([portrait.data]), plain_pipeline.process([portrait.data])
    # same face, same chip; the two spaces are close but not the same (measured 0.996-0.999)
    assert 0.95 < float(a.embedding @ b.embedding) < 0.9999
