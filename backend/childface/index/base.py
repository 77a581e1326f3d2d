"""The vector-index contract, its snapshot file format and the lock that guards it.

Contract (DESIGN.md invariant 4): vectors are L2-normalised float32 rows of
`dim` values, produced by one embedding model (`model_id`); similarity is the
inner product, i.e. cosine. Ids are the DB's face ids (int64, >= 0). An index
never mixes models: a snapshot records `model_id` and `dim` and `load` refuses
one of another model.

`search` returns, per query row, the k best ids and similarities, best first.
When fewer than k faces are present the row is padded with id -1 and
similarity `-inf` (`PAD_ID`, `PAD_SIMILARITY`), so callers stop at the first -1.

The index is derived data. `watermark` is the position in the DB's change
sequence up to which the index reflects the DB; it is saved with the snapshot,
so a restart replays only the changes after it.

Snapshot file (one file, written atomically: temp file in the same folder,
fsync, `os.replace`, fsync of the folder)::

    b"CFVIDX\\x00\\x01"        8 bytes  magic + format version
    header length             4 bytes  little-endian uint32
    header                    JSON     kind, model_id, dim, watermark, count,
                                       payload_len, payload_sha256, sections
    payload                   bytes    backend sections, back to back

`load` checks magic, header, payload length and sha256 (streamed through a
small buffer, so the payload is never held twice) before anything is
deserialised, so a truncated or bit-flipped file raises `SnapshotCorrupt`
instead of loading wrong data.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Self

import numpy as np

PAD_ID = -1
PAD_SIMILARITY = float("-inf")
#: how far a row's L2 norm may be from 1.0 before it is refused
UNIT_NORM_TOLERANCE = 1e-3

SNAPSHOT_MAGIC = b"CFVIDX\x00\x01"
_HEADER_LEN = struct.Struct("<I")
_MAX_HEADER_BYTES = 1 << 20
#: bytes hashed per read while verifying a snapshot
_HASH_CHUNK = 8 << 20


class SnapshotError(Exception):
    """A snapshot cannot be used; the caller rebuilds the index from the DB."""


class SnapshotCorrupt(SnapshotError):
    """The file is truncated, damaged or not a snapshot at all."""


class SnapshotMismatch(SnapshotError):
    """The file is a valid snapshot of another model, dimension or index kind."""


class RWLock:
    """Many concurrent readers or one writer; a waiting writer blocks new readers.

    Searches (readers) run in parallel from the API's thread pool; add, remove
    and the swap after a rebuild (writers) get the index to themselves. Writer
    preference keeps a steady stream of searches from starving enrollment.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class VectorIndex(ABC):
    """One embedding model's face vectors, searchable by cosine similarity.

    Implementations are thread-safe: any number of `search` calls may run
    concurrently with each other and with `add`/`remove` from other threads.
    """

    #: short name of the backend, stored in snapshots ("faiss", "torch-exact")
    kind: str

    def __init__(self, model_id: str, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        if not model_id:
            raise ValueError("model_id must be a non-empty string")
        self._model_id = model_id
        self._dim = int(dim)
        self._watermark = 0
        self._lock = RWLock()

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def watermark(self) -> int:
        """Position in the DB change sequence that this index reflects."""
        return self._watermark

    @watermark.setter
    def watermark(self, value: int) -> None:
        if value < 0:
            raise ValueError(f"watermark must be >= 0, got {value}")
        self._watermark = int(value)

    # --- the operations ------------------------------------------------------

    @abstractmethod
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace: an id already present gets the new vector, never a second entry."""

    def bulk_load(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """`add` for filling an index in one go (a rebuild); a backend may take `vectors` over
        without copying it, so the caller must not change the array afterwards."""
        self.add(ids, vectors)

    @abstractmethod
    def remove(self, ids: np.ndarray) -> int:
        """Remove these ids; unknown ids are ignored. Returns how many were present."""

    def purge(self, ids: np.ndarray) -> int:
        """Remove these ids so that no copy of their vectors stays in the index's memory (erasure).

        `remove` may only hide an entry; after `purge` the vectors are gone from the
        structure, so the next `save` cannot write them. This default suits backends
        whose removal is physical; the others override it. Returns how many were present.
        """
        return self.remove(ids)

    @abstractmethod
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(q, dim) unit queries -> ids (q, k) int64 and similarities (q, k) float32, best first."""

    @property
    @abstractmethod
    def count(self) -> int:
        """Number of faces present."""

    @abstractmethod
    def ids(self) -> np.ndarray:
        """All face ids present, int64, sorted ascending."""

    @abstractmethod
    def contains(self, face_id: int) -> bool:
        """Whether this face id is present."""

    @abstractmethod
    def vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of these ids (float32 (n, dim)); KeyError for an absent id."""

    # --- snapshots -----------------------------------------------------------

    @abstractmethod
    def _snapshot_state(self) -> tuple[dict[str, Any], list[tuple[str, bytes | np.ndarray]]]:
        """Backend metadata and named payload sections, called under the read lock.

        The sections must be copies: `save` hashes and writes them after releasing the lock.
        """

    @classmethod
    @abstractmethod
    def _from_snapshot(
        cls,
        model_id: str,
        dim: int,
        meta: dict[str, Any],
        sections: dict[str, SnapshotSection],
        **options: Any,
    ) -> Self:
        """Rebuild an index from `_snapshot_state`'s output (checksum already verified).

        `options` are the constructor's keyword arguments (current settings, e.g. efSearch).
        """

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a snapshot atomically: a reader sees the old file or the new one, never a mix."""
        with self._lock.read():
            meta, sections = self._snapshot_state()
            watermark = self._watermark
            count = self.count
        blobs = [
            (name, memoryview(np.ascontiguousarray(data).reshape(-1).view(np.uint8)))
            for name, data in sections
        ]
        digest = hashlib.sha256()
        for _, blob in blobs:
            digest.update(blob)
        header = {
            "kind": self.kind,
            "model_id": self._model_id,
            "dim": self._dim,
            "watermark": watermark,
            "count": count,
            "meta": meta,
            "sections": [[name, blob.nbytes] for name, blob in blobs],
            "payload_len": sum(blob.nbytes for _, blob in blobs),
            "payload_sha256": digest.hexdigest(),
        }
        header_bytes = json.dumps(header, sort_keys=True).encode()
        _atomic_write(
            Path(path),
            [SNAPSHOT_MAGIC, _HEADER_LEN.pack(len(header_bytes)), header_bytes] + [blob for _, blob in blobs],
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        model_id: str | None = None,
        dim: int | None = None,
        **options: Any,
    ) -> Self:
        """Read a snapshot written by `save`; `options` go to the constructor.

        Raises `SnapshotCorrupt` for a damaged/truncated file and `SnapshotMismatch`
        when it holds another backend, model or dimension than asked for.
        FileNotFoundError passes through (no snapshot yet).
        """
        with open_snapshot(path) as (header, sections):
            if header["kind"] != cls.kind:
                raise SnapshotMismatch(f"snapshot holds a {header['kind']!r} index, not {cls.kind!r}")
            if model_id is not None and header["model_id"] != model_id:
                raise SnapshotMismatch(
                    f"snapshot is of model {header['model_id']!r}, this index serves {model_id!r}"
                )
            if dim is not None and header["dim"] != dim:
                raise SnapshotMismatch(f"snapshot has dim {header['dim']}, expected {dim}")
            try:
                index = cls._from_snapshot(
                    header["model_id"], header["dim"], header["meta"], sections, **options
                )
            except (ValueError, KeyError, RuntimeError) as exc:
                raise SnapshotCorrupt(f"snapshot payload does not deserialise: {exc}") from exc
        if index.count != header["count"]:
            raise SnapshotCorrupt(f"snapshot says {header['count']} faces, payload has {index.count}")
        index.watermark = header["watermark"]
        return index


class SnapshotSection:
    """One payload section of an open, checksum-verified snapshot, read from the file on demand.

    Sections are read straight into their final arrays (or streamed into FAISS), so
    loading never holds the payload twice.
    """

    def __init__(self, fh: BinaryIO, offset: int, nbytes: int) -> None:
        self._fh, self._offset, self.nbytes = fh, offset, nbytes

    def array(self, dtype: type | np.dtype) -> np.ndarray:
        """The section as a new 1-d array of `dtype`."""
        dtype = np.dtype(dtype)
        if self.nbytes % dtype.itemsize:
            raise ValueError(f"section of {self.nbytes} bytes is not a whole number of {dtype}")
        out = np.empty(self.nbytes // dtype.itemsize, dtype=dtype)
        self._fh.seek(self._offset)
        if self._fh.readinto(memoryview(out).cast("B")) != self.nbytes:
            raise ValueError("section ends early")
        return out

    def reader(self) -> Callable[[int], bytes]:
        """A `read(n) -> bytes` over this section only (for FAISS's callback reader)."""
        position = self._offset
        end = self._offset + self.nbytes

        def read(n: int) -> bytes:
            nonlocal position
            self._fh.seek(position)
            data = self._fh.read(max(0, min(n, end - position)))
            position += len(data)
            return data

        return read


@contextmanager
def open_snapshot(
    path: str | os.PathLike[str],
) -> Iterator[tuple[dict[str, Any], dict[str, SnapshotSection]]]:
    """Validate a snapshot (magic, header, length, sha256) and yield its header and sections.

    The checksum is computed by streaming the payload through a fixed buffer before
    anything is deserialised; the sections then read from the same open file, so a
    snapshot replaced meanwhile (`os.replace` makes a new file) cannot mix in.
    """
    with open(path, "rb") as fh:
        header, start = _read_header(fh, path)
        payload_len = int(header["payload_len"])
        size = os.fstat(fh.fileno()).st_size
        if size != start + payload_len:
            raise SnapshotCorrupt(f"{path}: payload is {size - start} bytes, header says {payload_len}")
        digest = hashlib.sha256()
        buffer = bytearray(_HASH_CHUNK)
        view = memoryview(buffer)
        left = payload_len
        while left:
            got = fh.readinto(view[: min(left, _HASH_CHUNK)])
            if not got:
                raise SnapshotCorrupt(f"{path}: payload ends {left} bytes early")
            digest.update(view[:got])
            left -= got
        if digest.hexdigest() != str(header["payload_sha256"]):
            raise SnapshotCorrupt(f"{path}: payload checksum mismatch")
        sections: dict[str, SnapshotSection] = {}
        offset = start
        for name, nbytes in header["sections"]:
            sections[name] = SnapshotSection(fh, offset, int(nbytes))
            offset += int(nbytes)
        if offset != start + payload_len:
            raise SnapshotCorrupt(f"{path}: sections do not add up to the payload")
        yield header, sections


def read_snapshot(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a valid snapshot (its checksum verified), without loading it."""
    with open_snapshot(path) as (header, _):
        return header


def _read_header(fh: BinaryIO, path: str | os.PathLike[str]) -> tuple[dict[str, Any], int]:
    magic = fh.read(len(SNAPSHOT_MAGIC))
    if magic != SNAPSHOT_MAGIC:
        raise SnapshotCorrupt(f"{path}: not a childface index snapshot (bad magic)")
    raw_len = fh.read(_HEADER_LEN.size)
    if len(raw_len) != _HEADER_LEN.size:
        raise SnapshotCorrupt(f"{path}: truncated header")
    (header_len,) = _HEADER_LEN.unpack(raw_len)
    if header_len > _MAX_HEADER_BYTES:
        raise SnapshotCorrupt(f"{path}: header length {header_len} is implausible")
    header_bytes = fh.read(header_len)
    try:
        header = json.loads(header_bytes)
        int(header["payload_len"])
        str(header["payload_sha256"])
        for key in ("kind", "model_id", "dim", "watermark", "count", "meta", "sections"):
            header[key]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotCorrupt(f"{path}: unreadable header ({exc})") from exc
    return header, len(SNAPSHOT_MAGIC) + _HEADER_LEN.size + header_len


def _atomic_write(path: Path, chunks: list[bytes | memoryview]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    # the rename itself is durable only once the folder entry is on disk
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """Validate the unit-vector contract; return a C-contiguous float32 (n, dim) view or copy."""
    arr = np.asarray(vectors)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ValueError(f"vectors must have shape (n, {dim}), got {tuple(np.shape(vectors))}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"vectors must be floating point, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("vectors contain NaN or infinity")
    if len(arr):
        norms = np.linalg.norm(arr, axis=1)
        worst = int(np.argmax(np.abs(norms - 1.0)))
        if abs(norms[worst] - 1.0) > UNIT_NORM_TOLERANCE:
            raise ValueError(
                f"vectors must be L2-normalised: row {worst} has norm {norms[worst]:.6f} "
                f"(tolerance {UNIT_NORM_TOLERANCE})"
            )
    return arr


def check_ids(ids: np.ndarray, n: int | None = None) -> np.ndarray:
    """Validate face ids: 1-d, integer, >= 0, unique within the call, matching `n` rows."""
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or (len(arr) and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-d integer array, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if n is not None and len(arr) != n:
        raise ValueError(f"{len(arr)} ids for {n} vectors")
    if len(arr) and arr.min() < 0:
        raise ValueError("ids must be >= 0 (-1 is the padding id)")
    if len(np.unique(arr)) != len(arr):
        raise ValueError("ids must be unique within one call")
    return arr


def check_k(k: int) -> int:
    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)
