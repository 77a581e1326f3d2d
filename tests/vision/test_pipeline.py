"""The whole pipeline with the default real models: bytes in, faces with quality and embeddings out."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from childface.config import Settings
from childface.vision.decode import ImageDecodeError
from childface.vision.pipeline import DetectedFace, FacePipeline


def _cosines(a: list[DetectedFace], b: list[DetectedFace]) -> np.ndarray:
    return np.array([float(np.dot(x.embedding, y.embedding)) for x, y in zip(a, b, strict=True)])


def test_group_photo_end_to_end(pipeline_cpu, group_photo):
    faces = pipeline_cpu.process([group_photo.data])[0]
    assert len(faces) == 6
    embedder = pipeline_cpu.embedder
    for face in faces:
        assert face.score >= 0.9 and len(face.box) == 4 and face.landmarks.shape == (5, 2)
        assert face.embedding.dtype == np.float32 and face.embedding.shape == (embedder.dim,)
        assert abs(np.linalg.norm(face.embedding) - 1) < 1e-4
        assert face.chip.dtype == np.uint8 and face.chip.shape == (embedder.chip_size, embedder.chip_size, 3)
        assert face.quality.passed
    vectors = np.stack([f.embedding for f in faces])
    similarity = vectors @ vectors.T
    assert similarity[~np.eye(6, dtype=bool)].max() < 0.95, "six different people"
    assert pipeline_cpu.model_id == embedder.model_id
    assert pipeline_cpu.detector_id.startswith("retinaface-mobilenet0.25:")


def test_bytes_and_arrays_give_the_same_faces(pipeline_cpu, group_photo):
    from_bytes, from_array = pipeline_cpu.process([group_photo.data, group_photo.rgb])
    assert len(from_bytes) == len(from_array) == 6
    assert np.all(_cosines(from_bytes, from_array) > 0.9999)


def test_batch_equals_images_alone(pipeline_cpu, group_photo, astronaut, portrait, mask_photos):
    images = [group_photo.data, mask_photos[0].data, astronaut.data, portrait.data]
    together = pipeline_cpu.process(images)
    assert [len(faces) for faces in together] == [6, 0, 1, 1]
    for image, batched in zip(images, together, strict=True):
        alone = pipeline_cpu.process([image])[0]
        assert len(alone) == len(batched)
        if alone:
            assert np.all(_cosines(alone, batched) > 0.9999)
            np.testing.assert_allclose([f.box for f in alone], [f.box for f in batched], atol=0.5)


def test_same_person_after_a_mirror_and_a_crop(pipeline_cpu, astronaut):
    """A mirrored, cropped and brightened copy of a face still embeds close to the original."""
    variant = np.ascontiguousarray(astronaut.rgb[20:400, 60:470, :][:, ::-1])
    variant = np.clip(variant.astype(np.int16) + 25, 0, 255).astype(np.uint8)
    original, changed = pipeline_cpu.process([astronaut.rgb, variant])
    assert len(original) == len(changed) == 1
    # measured 0.993; dlib's "same person" rule (distance < 0.6 at norm ~1.4) is cosine > ~0.9
    assert float(np.dot(original[0].embedding, changed[0].embedding)) > 0.93


def test_detect_only_has_no_embeddings(pipeline_cpu, group_photo):
    faces = pipeline_cpu.detect_only([group_photo.data])[0]
    assert len(faces) == 6 and all(f.embedding is None for f in faces)
    payload = faces[0].to_dict(embedding=True)
    assert set(payload) == {"box", "score", "landmarks", "quality"}


def test_to_dict_is_json_ready(pipeline_cpu, portrait):
    import json

    face = pipeline_cpu.process([portrait.data])[0][0]
    payload = json.loads(json.dumps(face.to_dict(embedding=True)))
    assert len(payload["box"]) == 4 and len(payload["landmarks"]) == 5
    assert len(payload["embedding"]) == pipeline_cpu.embedder.dim
    assert payload["quality"]["passed"] is True and payload["quality"]["reasons"] == []


def test_bad_inputs_are_refused(pipeline_cpu, group_photo):
    with pytest.raises(ImageDecodeError) as caught:
        pipeline_cpu.process([group_photo.data, b"not an image at all"])
    assert caught.value.code == "not_an_image"
    with pytest.raises(ValueError, match="uint8 RGB"):
        pipeline_cpu.process([group_photo.rgb.astype(np.float32)])
    assert pipeline_cpu.process([]) == []


def test_models_load_once_per_process(settings_cpu, pipeline_cpu):
    again = FacePipeline.from_settings(settings_cpu.model_copy(update={"quality_min_face_px": 10}))
    assert again.detector is pipeline_cpu.detector and again.embedder is pipeline_cpu.embedder
    assert again.settings.quality_min_face_px == 10  # quality settings are per pipeline


def test_concurrent_calls_from_threads(pipeline_cpu, group_photo, astronaut):
    expected = pipeline_cpu.process([group_photo.data])[0]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(
            pool.map(lambda data: pipeline_cpu.process([data])[0], [group_photo.data] * 3 + [astronaut.data])
        )
    for faces in results[:3]:
        assert len(faces) == 6 and np.all(_cosines(expected, faces) > 0.9999)
    assert len(results[3]) == 1


@pytest.mark.gpu
def test_cuda_matches_cpu(pipeline_cpu, group_photo, settings_cpu):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    gpu = FacePipeline.from_settings(settings_cpu.model_copy(update={"device": "cuda"}))
    faces_gpu = gpu.process([group_photo.data])[0]
    faces_cpu = pipeline_cpu.process([group_photo.data])[0]
    assert len(faces_gpu) == len(faces_cpu) == 6
    # fp16 detector and embedder on CUDA: boxes within a pixel or two, descriptors cos > 0.999
    np.testing.assert_allclose([f.box for f in faces_gpu], [f.box for f in faces_cpu], atol=2.0)
    assert np.all(_cosines(faces_cpu, faces_gpu) > 0.999)


def test_settings_decide_the_device(settings_cpu):
    assert Settings(device="cpu", _env_file=None).resolved_device == "cpu"
    assert FacePipeline.from_settings(settings_cpu).device.type == "cpu"
