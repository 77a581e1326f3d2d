"""The backup file: one stream, written once front to back, read once front to back, every byte checked.

Layout::

    header        "CFBACKUP", format version (1 byte), mode (1 byte: 0 plain, 1 encrypted)
                  encrypted: scrypt log2(N), r, p (1 byte each), chunk size (4 bytes, big-endian),
                  salt (16 bytes), nonce prefix (7 bytes), key check (16 bytes)
    body          a tar stream (see below)
                  plain: the tar bytes as they are, then sha256(header + tar) (32 bytes)
                  encrypted: the tar bytes in chunks of `chunk size`, each sealed with AES-256-GCM

Encryption (mode 1): scrypt (N = 2**17, r = 8, p = 1 by default; the header carries
them) turns the passphrase and a random salt into 64 bytes: an AES-256 key and a
key-check key. The key check (HMAC-SHA256 of the header under the key-check key,
16 bytes) tells a wrong passphrase from a damaged file before anything is
decrypted. Chunk i's 12-byte nonce is the random prefix, i (4 bytes) and a final
flag (1 byte), and every chunk's associated data is the header: so a chunk that
was changed, moved, dropped or taken from another backup fails authentication,
and a file cut at a chunk boundary lacks the chunk flagged final. Every chunk
but the last holds exactly `chunk size` bytes, so a reader knows which one must
be final; nothing after it is allowed. Memory use is one chunk each way.

Plain mode (`childface backup --no-encrypt`) protects against accidents, not
attackers: the trailing sha256 covers every byte before it.

The tar stream (uncompressed; photos do not compress and the file stays
searchable in plain mode) holds, in this order:

- `manifest.json`: what the backup is (`Manifest`), first, so a reader can refuse
  a backup it cannot restore (another database kind, a newer schema) at once;
- `database/childface.sqlite` (a consistent copy of the SQLite file) or
  `database/childface.pgdump` (`pg_dump` custom format, uncompressed);
- `media/<path>`: every photo the database names, at its `images.path`;
- `index/<name>.cfidx`: vector-index snapshots that match the database copy;
- `checksums.json`, last: sha256 and size of every member before it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

MAGIC = b"CFBACKUP"
FORMAT_VERSION = 1
MODE_PLAIN = 0
MODE_ENCRYPTED = 1
#: plaintext bytes per encrypted chunk
CHUNK_SIZE = 1 << 20
#: scrypt cost: 2**17 * 128 * r = 128 MiB of memory and about half a second per key, once per backup
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 17, 8, 1
MIN_PASSPHRASE_CHARS = 8

MANIFEST = "manifest.json"
CHECKSUMS = "checksums.json"
SQLITE_MEMBER = "database/childface.sqlite"
PG_MEMBER = "database/childface.pgdump"
MEDIA_PREFIX = "media/"
INDEX_PREFIX = "index/"
#: the file name suffix `childface backup FOLDER` gives a new backup
SUFFIX = ".cfbak"

_PREAMBLE = struct.Struct(">8sBB")
_KDF = struct.Struct(">BBBI16s7s")
_CHECK_LEN = 16
_TAG_LEN = 16
_DIGEST_LEN = 32
_READ_BLOCK = 1 << 20
#: one part of a member's path: no hidden files, no `..`
MEMBER_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class BackupError(RuntimeError):
    """A backup cannot be taken, read or restored; the message says why, for a person."""


class PassphraseNeeded(BackupError):
    """The backup is encrypted and no passphrase was given."""

    message = (
        "this backup is encrypted: give its passphrase (CHILDFACE_BACKUP_PASSPHRASE or --passphrase-file)"
    )


class WrongPassphrase(BackupError):
    """The passphrase does not open this backup."""


class BackupDamaged(BackupError):
    """The file is not a complete, unaltered backup: corrupted, truncated, or not a backup at all."""


def check_passphrase(passphrase: str) -> bytes:
    """The passphrase as bytes; refuses one too short to protect children's biometric data."""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise BackupError(f"the backup passphrase must have at least {MIN_PASSPHRASE_CHARS} characters")
    return passphrase.encode("utf-8")


def _derive(secret: bytes, salt: bytes, log2_n: int, r: int, p: int) -> tuple[bytes, bytes]:
    material = Scrypt(salt=salt, length=64, n=1 << log2_n, r=r, p=p).derive(secret)
    return material[:32], material[32:]


def _key_check(check_key: bytes, header: bytes) -> bytes:
    return hmac.new(check_key, header, hashlib.sha256).digest()[:_CHECK_LEN]


def _nonce(prefix: bytes, index: int, final: bool) -> bytes:
    if index >= 1 << 32:
        raise BackupError("backup too large for its chunk counter")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if final else b"\x00")


# ---- writing ---------------------------------------------------------------------------------------


class ArchiveWriter:
    """A write-only stream that frames (and with a passphrase, encrypts) what is written to `out`.

    Call `finish()` after the last write: it writes the final chunk or the checksum trailer.
    """

    def __init__(
        self,
        out: BinaryIO,
        passphrase: str | None,
        *,
        chunk_size: int = CHUNK_SIZE,
        scrypt: tuple[int, int, int] = (SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P),
    ) -> None:
        self._out = out
        self._buffer = bytearray()
        self._chunk = chunk_size
        self._index = 0
        self.bytes_written = 0
        if passphrase is None:
            header = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, MODE_PLAIN)
            self._aead: AESGCM | None = None
            self._digest = hashlib.sha256(header)
        else:
            secret = check_passphrase(passphrase)
            salt, prefix = os.urandom(16), os.urandom(7)
            log2_n, r, p = scrypt
            header = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, MODE_ENCRYPTED) + _KDF.pack(
                log2_n, r, p, chunk_size, salt, prefix
            )
            key, check_key = _derive(secret, salt, log2_n, r, p)
            header += _key_check(check_key, header)
            self._aead, self._prefix = AESGCM(key), prefix
        self._header = header
        self._emit(header)

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    def _emit(self, data: bytes) -> None:
        self._out.write(data)
        self.bytes_written += len(data)

    def write(self, data: bytes) -> int:
        if self._aead is None:
            self._digest.update(data)
            self._emit(data)
            return len(data)
        self._buffer += data
        while len(self._buffer) >= self._chunk:
            self._seal(bytes(self._buffer[: self._chunk]), final=False)
            del self._buffer[: self._chunk]
        return len(data)

    def _seal(self, plain: bytes, *, final: bool) -> None:
        assert self._aead is not None
        self._emit(self._aead.encrypt(_nonce(self._prefix, self._index, final), plain, self._header))
        self._index += 1

    def finish(self) -> None:
        if self._aead is None:
            self._emit(self._digest.digest())
        else:
            # always shorter than a full chunk (possibly empty): a reader knows it is the last
            self._seal(bytes(self._buffer), final=True)
            self._buffer.clear()


# ---- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    encrypted: bool
    raw: bytes
    scrypt: tuple[int, int, int] = (0, 0, 0)
    chunk_size: int = 0
    salt: bytes = b""
    prefix: bytes = b""
    key_check: bytes = b""


def _read_exact(src: BinaryIO, n: int) -> bytes:
    data = src.read(n)
    if len(data) != n:
        raise BackupDamaged("the file is too short to be a childface backup (truncated?)")
    return data


def read_header(src: BinaryIO) -> Header:
    """Read and check the header at the start of `src`."""
    preamble = src.read(_PREAMBLE.size)
    if len(preamble) < _PREAMBLE.size or preamble[: len(MAGIC)] != MAGIC:
        raise BackupDamaged("not a childface backup (the file does not start with CFBACKUP)")
    _, version, mode = _PREAMBLE.unpack(preamble)
    if version != FORMAT_VERSION:
        raise BackupError(
            f"backup format version {version} is not known to this version of childface "
            f"(it reads {FORMAT_VERSION})"
        )
    if mode == MODE_PLAIN:
        return Header(encrypted=False, raw=preamble)
    if mode != MODE_ENCRYPTED:
        raise BackupDamaged(f"unknown backup mode {mode} in the header")
    kdf = _read_exact(src, _KDF.size)
    log2_n, r, p, chunk_size, salt, prefix = _KDF.unpack(kdf)
    # bounds: a damaged (or hostile) header must not make the reader allocate gigabytes
    if not (14 <= log2_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16 and 4096 <= chunk_size <= 1 << 26):
        raise BackupDamaged("the backup header holds implausible key or chunk parameters (damaged)")
    key_check = _read_exact(src, _CHECK_LEN)
    return Header(True, preamble + kdf, (log2_n, r, p), chunk_size, salt, prefix, key_check)


class ArchiveReader:
    """A read-only stream of the body of a backup, checked as it is read.

    `read` raises `BackupDamaged` as soon as a chunk fails authentication; the end
    of the data is only reported once the final chunk (or the checksum trailer)
    checked out. Call `finish()` after the tar stream ended: it reads the rest and
    insists that the file ends exactly where it should.
    """

    def __init__(
        self,
        src: BinaryIO,
        header: Header,
        passphrase: str | None,
        *,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self._src = src
        self._header = header
        self._on_read = on_read
        self._pending = bytearray()
        self._eof = False
        self._index = 0
        if header.encrypted:
            if passphrase is None:
                raise PassphraseNeeded(PassphraseNeeded.message)
            key, check_key = _derive(passphrase.encode("utf-8"), header.salt, *header.scrypt)
            if not hmac.compare_digest(_key_check(check_key, header.raw), header.key_check):
                raise WrongPassphrase("wrong passphrase for this backup (or its header is damaged)")
            self._aead: AESGCM | None = AESGCM(key)
            self._aad = header.raw + header.key_check
        else:
            self._aead = None
            self._digest = hashlib.sha256(header.raw)
            self._tail = b""  # the last 32 bytes seen: the trailer, once the file ends

    def _raw(self, n: int) -> bytes:
        data = self._src.read(n)
        if self._on_read is not None and data:
            self._on_read(len(data))
        return data

    def _fill(self) -> None:
        """Move the next checked piece of plaintext into `_pending` (or set `_eof`)."""
        if self._aead is None:
            data = self._raw(_READ_BLOCK)
            if not data:
                if len(self._tail) < _DIGEST_LEN:
                    raise BackupDamaged("the backup is truncated (its checksum trailer is missing)")
                if not hmac.compare_digest(self._digest.digest(), self._tail):
                    raise BackupDamaged("the backup is damaged: its checksum does not match its contents")
                self._eof = True
                return
            window = self._tail + data
            body, self._tail = window[:-_DIGEST_LEN], window[-_DIGEST_LEN:]
            self._digest.update(body)
            self._pending += body
            return
        sealed_len = self._header.chunk_size + _TAG_LEN
        sealed = self._raw(sealed_len)
        while 0 < len(sealed) < sealed_len:  # a pipe or socket may return less than asked
            more = self._raw(sealed_len - len(sealed))
            if not more:
                break
            sealed += more
        if not sealed:
            raise BackupDamaged(
                f"the backup is truncated: it ends after chunk {self._index} without its final chunk"
            )
        final = len(sealed) < sealed_len
        try:
            plain = self._aead.decrypt(_nonce(self._header.prefix, self._index, final), sealed, self._aad)
        except InvalidTag:
            raise BackupDamaged(
                f"the backup is damaged or was altered: chunk {self._index} fails its authentication check"
                + (" (or the file is truncated)" if final else "")
            ) from None
        self._index += 1
        self._pending += plain
        if final:
            if self._raw(1):
                raise BackupDamaged("the backup is damaged: there is data after its final chunk")
            self._eof = True

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._pending) < size):
            self._fill()
        if size < 0 or size >= len(self._pending):
            out = bytes(self._pending)
            self._pending.clear()
        else:
            out = bytes(self._pending[:size])
            del self._pending[:size]
        return out

    def finish(self) -> None:
        """Read to the end and check it (tar leaves zero padding after its end-of-archive marker)."""
        while True:
            rest = self.read(_READ_BLOCK)
            if not rest:
                return
            if rest.count(0) != len(rest):
                raise BackupDamaged("the backup is damaged: unexpected data after the end of its contents")


# ---- what the backup holds -------------------------------------------------------------------------


@dataclass
class Manifest:
    """What a backup is: written first in the archive (see the module docstring)."""

    created_at: str  # ISO 8601, UTC
    childface_version: str
    database: str  # "sqlite" | "postgresql"
    schema_revision: str
    server_version: str | None  # PostgreSQL server that was dumped
    last_audit_seq: int  # the newest audit event in the copy
    counts: dict[str, int]  # children, faces, images, embeddings, audit_events
    models: list[dict[str, Any]]  # embedding_models rows: key, dim, state
    photos: int  # media files in the archive (= images rows)
    index_snapshots: list[str] = field(default_factory=list)  # member names under index/
    index_left_out: dict[str, str] = field(default_factory=dict)  # snapshot file -> why it is not included
    format: int = FORMAT_VERSION

    @property
    def database_member(self) -> str:
        return SQLITE_MEMBER if self.database == "sqlite" else PG_MEMBER

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            manifest = cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})
            if manifest.database not in ("sqlite", "postgresql"):
                raise ValueError(f"unknown database kind {manifest.database!r}")
            if not isinstance(manifest.schema_revision, str):
                raise ValueError("no schema revision")
            int(manifest.last_audit_seq)
            int(manifest.photos)
        except (ValueError, TypeError, KeyError) as exc:
            raise BackupDamaged(f"the backup's manifest is unreadable ({exc})") from exc
        return manifest


def checked_member(name: str) -> PurePosixPath:
    """A member name of a backup, refused unless it is one the format allows (no absolute paths,
    no `..`, no hidden files: nothing can land outside the staging folder)."""
    path = PurePosixPath(name)
    if name in (MANIFEST, CHECKSUMS, SQLITE_MEMBER, PG_MEMBER):
        return path
    if (
        not path.is_absolute()
        and len(path.parts) >= 2
        and path.parts[0] in ("media", "index")
        and all(MEMBER_NAME.fullmatch(part) for part in path.parts[1:])
        and (path.parts[0] == "media" or (len(path.parts) == 2 and path.suffix == ".cfidx"))
    ):
        return path
    raise BackupDamaged(f"the backup holds an unexpected entry {name[:200]!r}")
