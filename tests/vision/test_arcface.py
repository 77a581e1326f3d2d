"""ArcFace backbones: arcface_torch key layout, .pth round trips, and ONNX initializer loading.

No published ArcFace weights ship on PyPI, so these tests use randomly initialised networks
(with random BatchNorm statistics, so that folding BatchNorm changes the numbers) and check that
every loading path gives back exactly the network that was saved.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from childface.vision import arcface


class _Scale(nn.Module):
    """Pixel normalisation inside the graph, as in MXNet-converted ArcFace models."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 127.5) * 0.0078125


def _randomised(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = arcface.get_backbone(arch).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.running_mean.normal_(0.0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, nn.PReLU):
                module.weight.uniform_(0.0, 0.5)
    return model


def _export(model: nn.Module, path: Path, *, fold: bool = True) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, 112, 112),),
            str(path),
            dynamo=False,
            do_constant_folding=fold,
            input_names=["input.1"],
            dynamic_axes={"input.1": {0: "batch"}},
        )
    return path


@pytest.fixture(scope="module")
def faces_input() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(1, 3, 112, 112) * 2 - 1


def test_arcface_torch_key_names() -> None:
    r50 = arcface.get_backbone("r50").state_dict()
    for key in (
        "conv1.weight",
        "bn1.running_var",
        "prelu.weight",
        "layer1.0.bn1.weight",
        "layer1.0.conv2.weight",
        "layer1.0.downsample.0.weight",
        "layer1.0.downsample.1.running_mean",
        "layer3.13.bn3.bias",
        "bn2.weight",
        "fc.bias",
        "features.running_var",
    ):
        assert key in r50, key
    assert r50["fc.weight"].shape == (512, 512 * 7 * 7)
    mbf = arcface.get_backbone("mbf").state_dict()
    for key in (
        "layers.0.layers.0.weight",
        "layers.1.layers.0.weight",
        "layers.2.layers.1.layers.0.weight",
        "layers.3.layers.3.layers.2.layers.1.running_var",
        "conv_sep.layers.2.weight",
        "features.layers.0.layers.0.weight",
        "features.layers.2.weight",
        "features.layers.3.running_mean",
    ):
        assert key in mbf, key
    assert mbf["layers.1.layers.0.weight"].shape == (128, 2, 3, 3)  # groups=64 in the stem


@pytest.mark.parametrize(("arch", "millions"), [("r50", 43.6), ("r100", 65.2)])
def test_iresnet_sizes(arch: str, millions: float) -> None:
    # the sizes insightface publishes for its IResNet-50 and -100 (fc over the 7x7 map included)
    count = sum(p.numel() for p in arcface.get_backbone(arch).parameters())
    assert count / 1e6 == pytest.approx(millions, abs=0.1)


def test_unknown_arch() -> None:
    with pytest.raises(ValueError, match="r50"):
        arcface.get_backbone("r200")


@pytest.mark.parametrize(
    ("arch", "prefixes"),
    # r50/r100 checkpoints are 170/260 MB: one file each keeps the suite lean
    [
        ("r18", ("", "module.")),
        ("r34", ("", "module.")),
        ("mbf", ("", "module.")),
        ("r50", ("",)),
        ("r100", ("module.",)),
    ],
)
def test_checkpoint_round_trip(arch: str, prefixes: tuple[str, ...], tmp_path: Path) -> None:
    state = _randomised(arch).state_dict()
    for prefix in prefixes:
        path = tmp_path / f"backbone{prefix}.pth"
        torch.save({f"{prefix}{k}": v for k, v in state.items()}, path)
        loaded = arcface.load_checkpoint(path, arch).state_dict()
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], state[k]) for k in state)
        path.unlink()


@pytest.mark.parametrize("arch", ["r18", "mbf"])
def test_checkpoint_outputs(arch: str, tmp_path: Path, faces_input: torch.Tensor) -> None:
    model = _randomised(arch)
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    loaded = arcface.load_checkpoint(tmp_path / "backbone.pth", arch)
    with torch.inference_mode():
        expected, out = model(faces_input), loaded(faces_input)
    assert out.shape == (1, 512)
    assert torch.equal(out, expected)


def test_checkpoint_of_another_arch_is_refused(tmp_path: Path) -> None:
    torch.save(arcface.get_backbone("r18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(arcface.ArcFaceWeightsError, match="'r34'"):
        arcface.load_checkpoint(tmp_path / "r18.pth", "r34")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(arcface.ArcFaceWeightsError, match="cannot read"):
        arcface.load_checkpoint(tmp_path / "junk.pth", "r18")
    with pytest.raises(FileNotFoundError):
        arcface.load_checkpoint(tmp_path / "missing.pth", "r18")


@pytest.mark.parametrize(("arch", "fold"), [("r18", True), ("r18", False), ("mbf", True)])
def test_onnx_export_loads_back(arch: str, fold: bool, tmp_path: Path, faces_input: torch.Tensor) -> None:
    import onnx

    model = _randomised(arch)
    path = _export(model, tmp_path / f"{arch}.onnx", fold=fold)
    ops = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    if arch == "r18" and fold:
        # eval-mode export folds every BN that follows a conv into it; the blocks' leading BNs,
        # bn2 and the BatchNorm1d head stay BatchNormalization nodes
        assert ops["BatchNormalization"] == 8 + 2
    if arch == "r18" and not fold:
        assert ops["BatchNormalization"] == sum(
            isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d) for m in model.modules()
        )
    loaded, detected = arcface.load_onnx(path)
    assert detected == arch
    with torch.inference_mode():
        expected, out = model(faces_input), loaded(faces_input)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is only a test-time cross-check")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (reference,) = session.run(None, {"input.1": faces_input.numpy()})
    np.testing.assert_allclose(out.numpy(), reference, atol=1e-4)


def test_onnx_that_is_not_arcface_is_refused(tmp_path: Path) -> None:
    small = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.PReLU(8)).eval()
    path = _export(small, tmp_path / "small.onnx")
    with pytest.raises(arcface.ArcFaceWeightsError, match="match no IResNet"):
        arcface.load_onnx(path)
    normalising = nn.Sequential(_Scale(), arcface.get_backbone("r18")).eval()
    with pytest.raises(arcface.ArcFaceWeightsError, match="convolution of its input"):
        arcface.load_onnx(_export(normalising, tmp_path / "normalising.onnx"))
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(arcface.ArcFaceWeightsError, match="cannot read"):
        arcface.load_onnx(tmp_path / "junk.onnx")
