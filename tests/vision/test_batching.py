"""The micro-batcher: concurrent callers share one batched model call and each gets its own faces."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from childface.vision.batching import MicroBatcher
from childface.vision.decode import ImageDecodeError
from childface.vision.pipeline import DetectedFace, FacePipeline


class CountingRun:
    """The real pipeline's batched model call, recording how many images each call got."""

    def __init__(self, pipeline: FacePipeline) -> None:
        self.pipeline = pipeline
        self.calls: list[int] = []

    def __call__(self, images: list[np.ndarray]) -> list[list[DetectedFace]]:
        self.calls.append(len(images))
        return self.pipeline._run(images, embed=True)


def _together(batcher: MicroBatcher, images: list[np.ndarray]) -> list[object]:
    """Submit `images` from one thread each; all announce first, so one batch gathers them all.
    Each slot holds the caller's result, or the exception it got."""
    announced = threading.Barrier(len(images))

    def caller(image: np.ndarray) -> object:
        try:
            with batcher.expecting():
                announced.wait()
                return batcher.submit(image)
        except Exception as exc:  # noqa: BLE001 - the test looks at what each caller got
            return exc

    with ThreadPoolExecutor(max_workers=len(images)) as pool:
        return list(pool.map(caller, images))


def _same_faces(a: list[DetectedFace], b: list[DetectedFace]) -> None:
    assert len(a) == len(b)
    np.testing.assert_allclose([f.box for f in a], [f.box for f in b], atol=0.5)
    cosines = [float(np.dot(x.embedding, y.embedding)) for x, y in zip(a, b, strict=True)]
    assert min(cosines) > 0.9999


def test_concurrent_callers_share_one_call_and_get_their_own_faces(pipeline_cpu, group_photo, portrait):
    run = CountingRun(pipeline_cpu)
    batcher = MicroBatcher(run, window_s=5.0, max_images=8)
    images = [group_photo.rgb, portrait.rgb, group_photo.rgb[:, ::-1].copy()]
    results = _together(batcher, images)
    assert run.calls == [3], "one model call for the three concurrent callers"
    assert [len(faces) for faces in results] == [6, 1, 6]
    for image, faces in zip(images, results, strict=True):
        _same_faces(pipeline_cpu.process([image])[0], faces)  # its own image's faces, as if alone


def test_a_bad_image_fails_only_its_caller(pipeline_cpu, group_photo, portrait):
    run = CountingRun(pipeline_cpu)
    batcher = MicroBatcher(run, window_s=5.0, max_images=8)
    empty = np.zeros((0, 16, 3), dtype=np.uint8)  # passes decoding's checks, the detector refuses it
    results = _together(batcher, [portrait.rgb, empty, group_photo.rgb])
    assert isinstance(results[1], ValueError) and "empty image" in str(results[1])
    assert [len(results[0]), len(results[2])] == [1, 6]
    assert run.calls[0] == 3 and sorted(run.calls[1:]) == [1, 1, 1], "the failed batch re-ran image by image"


def test_bad_bytes_fail_in_their_own_request_thread(pipeline_cpu, portrait):
    def recognise(data: bytes) -> object:
        try:
            with pipeline_cpu.batcher.expecting():
                return pipeline_cpu.process_concurrent(data)
        except ImageDecodeError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=3) as pool:
        good, bad, again = pool.map(recognise, [portrait.data, b"not an image", portrait.data])
    assert isinstance(bad, ImageDecodeError) and bad.code == "not_an_image"
    _same_faces(good, again)
    assert len(good) == 1


def test_a_lone_request_is_not_held_back() -> None:
    batcher = MicroBatcher(lambda images: [len(images)] * len(images), window_s=30.0, max_images=8)
    started = time.monotonic()
    assert batcher.submit(np.zeros((1, 1, 3), np.uint8)) == 1
    assert time.monotonic() - started < 5, "nobody else announced an image: no wait for the window"


def test_a_batch_waits_for_an_announced_image_at_most_the_window() -> None:
    batcher = MicroBatcher(lambda images: [len(images)] * len(images), window_s=0.3, max_images=8)
    announced, release = threading.Event(), threading.Event()

    def slow_caller() -> None:  # announces an image, then never sends it within the window
        with batcher.expecting():
            announced.set()
            release.wait(10)

    thread = threading.Thread(target=slow_caller)
    thread.start()
    announced.wait(10)
    started = time.monotonic()
    assert batcher.submit(np.zeros((1, 1, 3), np.uint8)) == 1
    waited = time.monotonic() - started
    release.set()
    thread.join()
    assert 0.25 <= waited < 5, waited


def test_a_full_batch_goes_at_once() -> None:
    calls: list[int] = []

    def run(images: list[np.ndarray]) -> list[int]:
        calls.append(len(images))
        return [len(images)] * len(images)

    batcher = MicroBatcher(run, window_s=30.0, max_images=2)
    started = time.monotonic()
    results = _together(batcher, [np.zeros((1, 1, 3), np.uint8)] * 4)
    assert results == [2, 2, 2, 2] and calls == [2, 2]
    assert time.monotonic() - started < 5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda images: images, window_s=-1, max_images=1)
    with pytest.raises(ValueError):
        MicroBatcher(lambda images: images, window_s=0, max_images=0)


def test_a_requests_faces_do_not_depend_on_the_images_batched_with_it(pipeline_cpu, group_photo, portrait):
    # the detector pads a batch to its largest image: the pipeline's batcher groups by resized shape,
    # so the portrait batched with two group photos gets exactly what it gets alone
    run = CountingRun(pipeline_cpu)
    batcher = MicroBatcher(run, window_s=5.0, max_images=8, group_by=pipeline_cpu.batcher.group_by)
    flipped = group_photo.rgb[:, ::-1].copy()  # same shape: shares a call with the group photo
    results = _together(batcher, [group_photo.rgb, portrait.rgb, flipped])
    assert sorted(run.calls) == [1, 2], "one call per resized shape"
    alone = pipeline_cpu.process([portrait.rgb])[0]
    got = results[1]
    assert len(got) == len(alone) == 1
    for a, b in zip(got, alone, strict=True):
        assert a.box == b.box and a.score == b.score
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        np.testing.assert_array_equal(a.embedding, b.embedding)
    _same_faces(pipeline_cpu.process([group_photo.rgb])[0], results[0])
