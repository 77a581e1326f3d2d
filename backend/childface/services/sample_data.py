"""Example and synthetic import data sets made from the photos installed packages ship.

Nothing here is committed to the repository: the photos come from
insightface's wheel (`t1.jpg`, a group photo of six people; `Tom_Hanks_54745.png`;
`mask_*.jpg`, fabric without a face) and scikit-image (`astronaut`), both
installed by `make run` and `make test`. Faces are located with our own detector, so
the crops follow the photos rather than hard-coded coordinates.

- `build_example_dataset`: a small CSV + photos a newcomer imports in a minute;
  it exercises every row outcome (imported, duplicate, refused with reasons)
  and the face box that picks one child out of the group photo.
- `build_synthetic_dataset`: N 640x480 one-face photos (real face crops,
  augmented, placed on varied backgrounds) for `childface bench import`.
- `build_people_folder`: one sub-folder of varied photos per sample person
  (framing, tilt, size, light, blur, noise, JPEG quality), for `childface eval`.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from childface.services.errors import InvalidInput
from childface.services.media import encode_jpeg

#: margin around a detected face when cropping a portrait, as a share of the box size per side
PORTRAIT_MARGIN = 0.6
EXAMPLE_CSV = "children.csv"
EXAMPLE_ZIP = "photos.zip"
CSV_HEADER = ("child_id", "name", "group", "image", "mask", "x", "y", "w", "h", "arousal", "valence")
_NAMES = ("Ada", "Ben", "Cleo", "Dev", "Ema", "Finn", "Gus", "Hana")
_GROUPS = ("Sunflowers", "Bluebells")


@dataclass(frozen=True)
class SourceFace:
    """A real face crop with its box inside the crop (x1, y1, x2, y2)."""

    key: str
    crop: np.ndarray  # RGB uint8
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class SamplePhotos:
    group: np.ndarray  # t1.jpg, RGB
    group_boxes: np.ndarray  # (6, 4) detected faces, left to right
    faces: list[SourceFace]  # six t1 people, the astronaut, Tom Hanks
    no_face: np.ndarray  # fabric mask photo: a photo in which there is no face


def _insightface_images() -> Path:
    try:
        import insightface
    except ImportError:
        raise InvalidInput(
            "the sample photos come from the insightface package: `make install` installs it "
            "(pip install --no-deps insightface==2.1)"
        ) from None
    return Path(insightface.__file__).parent / "data" / "images"


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InvalidInput(f"cannot read sample photo {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _crop(rgb: np.ndarray, box: np.ndarray, margin: float) -> tuple[np.ndarray, tuple[float, ...]]:
    x1, y1, x2, y2 = (float(v) for v in box)
    pad_x, pad_y = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(x1 - pad_x)), max(0, int(y1 - pad_y))
    right, bottom = min(rgb.shape[1], int(x2 + pad_x)), min(rgb.shape[0], int(y2 + pad_y))
    return rgb[top:bottom, left:right].copy(), (x1 - left, y1 - top, x2 - left, y2 - top)


def load_sample_photos(detector) -> SamplePhotos:  # noqa: ANN001 - any object with RetinaFaceDetector.detect
    """The packaged photos with their faces located by `detector`."""
    try:
        from skimage import data as skimage_data
    except ImportError:
        raise InvalidInput(
            "the astronaut photo comes from scikit-image: `make install` installs it "
            "(pip install 'childface[examples]')"
        ) from None
    folder = _insightface_images()
    group = _read_rgb(folder / "t1.jpg")
    astronaut = np.ascontiguousarray(skimage_data.astronaut())
    hanks = _read_rgb(folder / "Tom_Hanks_54745.png")
    # Tom Hanks' portrait is 112 px: upscaled so the face clears the quality gate's minimum size
    hanks = cv2.resize(hanks, (336, 336), interpolation=cv2.INTER_CUBIC)
    found = detector.detect([group, astronaut, hanks])
    if len(found[0]) != 6 or len(found[1]) < 1 or len(found[2]) < 1:
        raise InvalidInput("the detector did not find the expected faces in the sample photos")
    order = np.argsort(found[0].boxes[:, 0])
    group_boxes = found[0].boxes[order]
    faces = []
    for i, box in enumerate(group_boxes):
        crop, crop_box = _crop(group, box, PORTRAIT_MARGIN)
        faces.append(SourceFace(f"t1-{i + 1}", crop, crop_box))  # type: ignore[arg-type]
    crop, crop_box = _crop(astronaut, found[1].boxes[0], PORTRAIT_MARGIN)
    faces.append(SourceFace("astronaut", crop, crop_box))  # type: ignore[arg-type]
    crop, crop_box = _crop(hanks, found[2].boxes[0], PORTRAIT_MARGIN)
    faces.append(SourceFace("tom-hanks", crop, crop_box))  # type: ignore[arg-type]
    return SamplePhotos(group=group, group_boxes=group_boxes, faces=faces,
                        no_face=_read_rgb(folder / "mask_blue.jpg"))


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int = 92) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(rgb, quality))


def _brightness(rgb: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def _xywh(box: tuple[float, ...]) -> list[str]:
    x1, y1, x2, y2 = box
    return [str(round(x1)), str(round(y1)), str(round(x2 - x1)), str(round(y2 - y1))]


@dataclass(frozen=True)
class ExampleDataset:
    csv_path: Path
    images_dir: Path
    zip_path: Path
    rows: int
    children: int


def build_example_dataset(out_dir: Path, detector, *, seed: int = 7) -> ExampleDataset:  # noqa: ANN001
    """Write OUT_DIR/children.csv, OUT_DIR/images/*.jpg and OUT_DIR/photos.zip (same photos)."""
    photos = load_sample_photos(detector)
    rng = np.random.default_rng(seed)
    images = Path(out_dir) / "images"
    images.mkdir(parents=True, exist_ok=True)
    rows: list[list[str]] = []

    def add(
        child: int, name: str, mask: int, box: tuple[float, ...] | None, arousal: float | None = None
    ) -> None:
        a = f"{rng.uniform(0.2, 0.8):.2f}" if arousal is None else f"{arousal:g}"
        v = f"{rng.uniform(0.2, 0.8):.2f}"
        group = _GROUPS[child % 2]
        rows.append([f"C{child + 1:03d}", _NAMES[child], group, name, str(mask),
                     *(_xywh(box) if box is not None else ["", "", "", ""]), a, v])

    _write_jpeg(images / "group" / "t1.jpg", photos.group)
    for child, face in enumerate(photos.faces):
        slug = f"c{child + 1:03d}"
        if child < 6:  # the group photo: the box says which of its six faces is this child
            add(child, "group/t1.jpg", 0, tuple(float(v) for v in photos.group_boxes[child]))
        _write_jpeg(images / slug / "portrait.jpg", face.crop)
        add(child, f"{slug}/portrait.jpg", 0, face.box)
        _write_jpeg(images / slug / "mirrored.jpg", face.crop[:, ::-1].copy())
        width = face.crop.shape[1]
        x1, y1, x2, y2 = face.box
        add(child, f"{slug}/mirrored.jpg", 0, (width - x2, y1, width - x1, y2))
        _write_jpeg(images / slug / "brighter.jpg", _brightness(face.crop, 1.25))
        add(child, f"{slug}/brighter.jpg", 0, None)  # no box: a one-face photo needs none
    _write_jpeg(images / "no-face.jpg", photos.no_face)
    add(8 - 1, "no-face.jpg", 1, None)  # refused: no face in the photo
    add(0, "c001/portrait.jpg", 0, photos.faces[0].box)  # duplicate of an earlier row
    add(2, "c003/brighter.jpg", 0, None, arousal=1.4)  # refused: arousal outside 0..1
    add(3, "c004/missing.jpg", 0, None)  # refused: the file is not there

    csv_path = Path(out_dir) / EXAMPLE_CSV
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_HEADER)
        writer.writerows(rows)
    zip_path = Path(out_dir) / EXAMPLE_ZIP
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as archive:
        for path in sorted(images.rglob("*.jpg")):
            archive.write(path, path.relative_to(images).as_posix())
    return ExampleDataset(csv_path=csv_path, images_dir=images, zip_path=zip_path, rows=len(rows),
                          children=len({r[0] for r in rows}))


# ---- synthetic photos for the import benchmark -----------------------------------------------------

SYNTHETIC_SIZE = (640, 480)  # width, height


def _background(rng: np.random.Generator) -> np.ndarray:
    width, height = SYNTHETIC_SIZE
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, width if rng.random() < 0.5 else height, dtype=np.float32)
    ramp = (c1[None, :] * (1 - t[:, None]) + c2[None, :] * t[:, None]).astype(np.float32)
    canvas = np.broadcast_to(ramp[None, :, :], (height, width, 3)) if ramp.shape[0] == width else \
        np.broadcast_to(ramp[:, None, :], (height, width, 3))
    canvas = canvas.copy()
    for _ in range(int(rng.integers(2, 7))):  # furniture-like blocks
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(30, 250)), int(rng.integers(30, 250))
        cv2.rectangle(canvas, (x, y), (x + w, y + h), rng.integers(0, 256, 3).tolist(), -1)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 3)
    canvas += rng.normal(0, 6, canvas.shape).astype(np.float32)
    return np.clip(canvas, 0, 255).astype(np.uint8)


def synthetic_photo(face: SourceFace, rng: np.random.Generator) -> np.ndarray:
    """One 640x480 photo: `face` augmented (scale, mirror, light, tilt) on a random background."""
    crop = face.crop[:, ::-1] if rng.random() < 0.5 else face.crop
    face_h = face.box[3] - face.box[1]
    scale = float(rng.uniform(110, 190)) / face_h
    crop = cv2.resize(np.ascontiguousarray(crop), None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    angle = float(rng.uniform(-8, 8))
    rot = cv2.getRotationMatrix2D((crop.shape[1] / 2, crop.shape[0] / 2), angle, 1.0)
    crop = cv2.warpAffine(crop, rot, (crop.shape[1], crop.shape[0]), borderMode=cv2.BORDER_REFLECT)
    crop = _brightness(crop, float(rng.uniform(0.8, 1.2)))
    canvas = _background(rng)
    width, height = SYNTHETIC_SIZE
    ch, cw = min(crop.shape[0], height), min(crop.shape[1], width)
    crop = crop[:ch, :cw]
    x, y = int(rng.integers(0, width - cw + 1)), int(rng.integers(0, height - ch + 1))
    # feathered elliptical blend, so the crop's rectangle does not read as an edge
    mask = np.zeros((ch, cw), np.float32)
    cv2.ellipse(mask, (cw // 2, ch // 2), (int(cw * 0.48), int(ch * 0.48)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), max(2.0, cw / 20))[:, :, None]
    region = canvas[y : y + ch, x : x + cw].astype(np.float32)
    canvas[y : y + ch, x : x + cw] = (mask * crop + (1 - mask) * region).astype(np.uint8)
    return canvas


def build_synthetic_dataset(out_dir: Path, n: int, detector, *, seed: int = 0) -> Path:  # noqa: ANN001
    """Write n synthetic photos (about 10 per child) and their CSV; returns the CSV path."""
    photos = load_sample_photos(detector)
    rng = np.random.default_rng(seed)
    images = Path(out_dir) / "images"
    n_children = max(1, n // 10)
    images.mkdir(parents=True, exist_ok=True)
    csv_path = Path(out_dir) / "synthetic.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("child_id", "image", "mask", "arousal", "valence"))
        for i in range(n):
            child = i % n_children
            face = photos.faces[child % len(photos.faces)]
            name = f"{i:05d}.jpg"
            _write_jpeg(images / name, synthetic_photo(face, rng), quality=90)
            writer.writerow((f"S{child:04d}", name, 0, f"{rng.random():.2f}", f"{rng.random():.2f}"))
    return csv_path


# ---- a labelled folder for `childface eval` ----------------------------------------------------------


def varied_photo(face: SourceFace, rng: np.random.Generator) -> np.ndarray:
    """Another photo of `face`: its own framing, tilt and slant, size and sharpness (some captured
    at a third of the resolution), light and colour, noise. Never mirrored, so a mirror-invariant
    embedding gains nothing for free."""
    x1, y1, x2, y2 = face.box
    side = max(x2 - x1, y2 - y1)
    half = side * float(rng.uniform(0.65, 0.95))
    cx = (x1 + x2) / 2 + side * float(rng.uniform(-0.08, 0.08))
    cy = (y1 + y2) / 2 + side * float(rng.uniform(-0.08, 0.08))
    out = int(rng.integers(140, 321))  # the photo's side, pixels
    turn = cv2.getRotationMatrix2D((cx, cy), float(rng.uniform(-15, 15)), out / (2 * half))
    turn[:, :2] = turn[:, :2] @ np.array([[1.0, float(rng.uniform(-0.1, 0.1))], [0.0, 1.0]])  # a slant
    turn[:, 2] = out / 2 - turn[:, :2] @ np.array([cx, cy])  # the face's centre to the photo's
    photo = cv2.warpAffine(face.crop, turn, (out, out), borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.35:  # a low-resolution capture
        small = max(32, int(out * float(rng.uniform(0.3, 0.7))))
        photo = cv2.resize(cv2.resize(photo, (small, small), interpolation=cv2.INTER_AREA), (out, out))
    light = photo.astype(np.float32) / 255.0
    light = np.power(light, float(rng.uniform(0.6, 1.6))) * float(rng.uniform(0.65, 1.3))
    light *= rng.uniform(0.9, 1.1, 3).astype(np.float32)  # a colour cast
    photo = np.clip(light * 255.0, 0, 255)
    if rng.random() < 0.4:
        photo = cv2.GaussianBlur(photo, (0, 0), float(rng.uniform(0.6, 2.0)))
    if rng.random() < 0.4:
        photo = photo + rng.normal(0, float(rng.uniform(2, 10)), photo.shape)
    return np.clip(photo, 0, 255).astype(np.uint8)


def build_people_folder(out_dir: Path, detector, *, photos_per_person: int = 10, seed: int = 11) -> Path:  # noqa: ANN001
    """Write OUT_DIR/<person>/NN.jpg: `photos_per_person` varied photos of each of the eight sample
    people (JPEG quality 40-95), a labelled folder for `childface eval`. Returns OUT_DIR."""
    if photos_per_person < 2:
        raise InvalidInput("a labelled folder needs at least two photos per person")
    photos = load_sample_photos(detector)
    rng = np.random.default_rng(seed)
    for face in photos.faces:
        for i in range(photos_per_person):
            path = Path(out_dir) / face.key / f"{i:02d}.jpg"
            _write_jpeg(path, varied_photo(face, rng), quality=int(rng.integers(40, 96)))
    return Path(out_dir)
