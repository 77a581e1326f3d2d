"""Content-addressed store for enrollment and review photos, and face thumbnails.

A photo's bytes live at `media_dir/ab/cd/<sha256>.<ext>` (`ab`, `cd`: the
first two byte pairs of the hash, so no folder grows past 65k entries). The
name is the content: writing the same photo twice is a no-op, and the
`images.path` column stores the path relative to `media_dir`, so the folder
can move.

Writes are atomic (temporary file `.cf-<host>-<pid>-*.tmp` in the same
folder, fsync, rename, fsync of the folder): a crash leaves the old state or
the new file, never half a photo, and a leftover temporary file names the
process that wrote it (start-up recovery removes those of dead writers).

Files and rows are kept in step by `services.file_journal` (DESIGN.md
invariant 3): a writer announces its file (`pending_writes`) before writing
it and the DB commit that refers to it; a deleting transaction journals the
files whose last row it removed; the journal's sweep deletes a file only when
no row and no live writer needs it. `hold(sha)` serialises one photo's
writers and deleters within this process.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from childface.services.owners import scratch_tag

THUMBNAIL_SIZE = 160
#: share of the face box added on each side of a thumbnail, so hair and chin show
THUMBNAIL_MARGIN = 0.25

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"WEBP", 8, "webp"),
    (b"BM", 0, "bmp"),
    (b"II*\x00", 0, "tif"),
    (b"MM\x00*", 0, "tif"),
    (b"GIF8", 0, "gif"),
)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: ISO-BMFF major brands of HEIF stills (an `ftyp` box at offset 4); AVIF and video brands are not photos
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


def image_extension(data: bytes) -> str:
    """File extension from the format's magic bytes ('bin' when unknown)."""
    for magic, offset, ext in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return ext
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "heic"
    return "bin"


class MediaStore:
    """Photos on disk, named by their sha256."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    def relative_path(self, sha256: str, ext: str) -> str:
        return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.{ext}"

    def absolute(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"media path {relative!r} leaves the media folder")
        return path

    @contextmanager
    def hold(self, sha256: str) -> Iterator[None]:
        """Serialise writers and deleters of one photo within this process (re-entrant)."""
        with self._locks_guard:
            lock = self._locks.setdefault(sha256, threading.RLock())
        with lock:
            yield

    def locate(self, data: bytes) -> tuple[str, str]:
        """Where these bytes are (or would be) stored: (sha256, path relative to the media folder)."""
        sha = sha256_hex(data)
        return sha, self.relative_path(sha, image_extension(data))

    def put(self, data: bytes) -> tuple[str, str]:
        """Store bytes (idempotent); returns (sha256, path relative to the media folder).

        Announce the write first (`file_journal.pending_writes`), or a sweep may take the file.
        """
        sha, relative = self.locate(data)
        path = self.absolute(relative)
        if not path.exists():
            atomic_write(path, data)
        return sha, relative

    def read(self, relative: str) -> bytes:
        return self.absolute(relative).read_bytes()

    def delete(self, relative: str) -> bool:
        """Remove a file (gone already is fine); True when there was one."""
        path = self.absolute(relative)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        # tidy empty fan-out folders; another writer may fill them again at any time
        for folder in (path.parent, path.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break
        return True


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so a reader (or a crash) sees the old file or the new one, never half.

    The temp file carries the writer's `scratch_tag`, so crash recovery can tell whose it is.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{scratch_tag()}", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # the rename is durable only once the folder entry is on disk: before the DB commit that refers to it
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def face_thumbnail(rgb: np.ndarray, box: list[float], size: int = THUMBNAIL_SIZE) -> bytes:
    """JPEG of the face in `box` (x1, y1, x2, y2, original pixels) plus a margin, longest side `size`."""
    height, width = rgb.shape[:2]
    x1, y1, x2, y2 = box
    pad_x, pad_y = (x2 - x1) * THUMBNAIL_MARGIN, (y2 - y1) * THUMBNAIL_MARGIN
    left, top = max(0, int(x1 - pad_x)), max(0, int(y1 - pad_y))
    right, bottom = min(width, int(np.ceil(x2 + pad_x))), min(height, int(np.ceil(y2 + pad_y)))
    crop = rgb[top:bottom, left:right] if right > left and bottom > top else rgb
    scale = size / max(crop.shape[:2])
    if scale < 1:
        crop = cv2.resize(
            crop,
            (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
            interpolation=cv2.INTER_AREA,
        )
    return encode_jpeg(crop, quality=85)


def encode_jpeg(rgb: np.ndarray, quality: int = 92) -> bytes:
    """An RGB (H, W, 3) uint8 image as JPEG bytes."""
    bgr = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("could not encode the image as JPEG")
    return encoded.tobytes()
