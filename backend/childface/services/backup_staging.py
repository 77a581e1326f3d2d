"""Reading a backup: the whole file, every byte checked, its members into a staging folder (or nowhere).

`read_backup` reads the header, then the tar stream in order: the manifest first
(handed to `before_stage`, where a caller refuses what it cannot restore before
anything else is read), every member after it written to the staging folder
(private files) while its sha256 is taken, and `checksums.json` last. Then each
member's sum and size are compared with the list, the manifest with its own
sum, the photo count with the manifest, and the end of the file with the
format's rule (final chunk, or checksum trailer). Only a backup that passes all
of it is returned; anything else raises `BackupDamaged` (or `WrongPassphrase`,
`PassphraseNeeded`) and the staging folder holds nothing to use.

`verify_backup` is the same read with no staging folder: the restore drill that
writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from childface.db.migrate import head_revision
from childface.services.backup import Progress, no_progress
from childface.services.backup_archive import (
    CHECKSUMS,
    INDEX_PREFIX,
    MANIFEST,
    MEDIA_PREFIX,
    ArchiveReader,
    BackupDamaged,
    BackupError,
    Manifest,
    checked_member,
    read_header,
)

_COPY_BUFFER = 1 << 20


@dataclass
class StagedBackup:
    """A backup read and checked completely; its members under `root` (when staged)."""

    manifest: Manifest
    root: Path
    database: Path
    media: list[tuple[str, Path]]  # (path relative to the media folder, staged file)
    index: list[Path]
    bytes_read: int


def known_revisions() -> set[str]:
    """Every schema revision this version of childface can migrate from."""
    from alembic.script import ScriptDirectory

    from childface.db.migrate import MIGRATIONS_DIR

    return {rev.revision for rev in ScriptDirectory(str(MIGRATIONS_DIR)).walk_revisions()}


def check_restorable(manifest: Manifest, backend: str | None) -> None:
    """Refuse a backup of a newer schema, or (with `backend`) of the other database kind."""
    if manifest.schema_revision not in known_revisions():
        raise BackupError(
            f"the backup's database schema ({manifest.schema_revision}) is newer than this version of "
            f"childface knows (up to {head_revision()}): restore it with the childface version that made it "
            f"({manifest.childface_version}) or a newer one"
        )
    if backend is not None and manifest.database != backend:
        wanted = "a SQLite file (sqlite:///...)" if manifest.database == "sqlite" else "PostgreSQL"
        raise BackupError(
            f"this is a backup of a {manifest.database} deployment and the configured database is {backend}: "
            f"restore it into {wanted} (CHILDFACE_DATABASE_URL); converting between them is not supported"
        )


def read_backup(
    src: Path,
    passphrase: str | None,
    staging: Path | None,
    progress: Progress,
    before_stage: Callable[[Manifest], None] = lambda manifest: None,
) -> StagedBackup:
    """Read the whole backup, checking every byte; with `staging`, write its members there.

    `before_stage(manifest)` runs once the manifest is read and before anything else
    is: the place to refuse early.
    """
    try:
        fh = src.open("rb")
    except OSError as exc:
        raise BackupError(f"cannot read {src}: {exc.strerror or exc}") from exc
    with fh:
        total = os.fstat(fh.fileno()).st_size
        header = read_header(fh)
        tick = progress("reading", total, "B")
        reader = ArchiveReader(fh, header, passphrase, on_read=tick)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
                staged = _members(tar, staging, before_stage)
            reader.finish()
        except (tarfile.TarError, EOFError) as exc:
            raise BackupDamaged(f"the backup is damaged: its contents cannot be read ({exc})") from exc
        staged.bytes_read = total
    return staged


def _members(
    tar: tarfile.TarFile, staging: Path | None, before_stage: Callable[[Manifest], None]
) -> StagedBackup:
    manifest: Manifest | None = None
    sums: dict[str, dict[str, Any]] = {}
    trailer: dict[str, Any] | None = None
    # photos are staged flat, numbered: no folder tree to make, and none to remove afterwards
    photos: list[tuple[str, Path]] = []
    if staging is not None:
        for folder in ("database", "media", "index"):
            (staging / folder).mkdir()
    for member in tar:
        path = checked_member(member.name)
        if not member.isfile():
            raise BackupDamaged(f"the backup holds {member.name!r}, which is not a plain file")
        if trailer is not None:
            raise BackupDamaged(f"the backup holds {member.name!r} after its checksum list")
        if manifest is None and member.name != MANIFEST:
            raise BackupDamaged("the backup does not start with its manifest")
        source = tar.extractfile(member)
        assert source is not None
        if member.name in (MANIFEST, CHECKSUMS):
            data = source.read()
            if member.name == MANIFEST:
                manifest = Manifest.from_json(data)
                sums[MANIFEST] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                before_stage(manifest)
            else:
                trailer = _parse_checksums(data)
            continue
        if member.name in sums:
            raise BackupDamaged(f"the backup holds {member.name!r} twice")
        digest = hashlib.sha256()
        size = 0
        target = None
        if staging is not None:
            is_photo = member.name.startswith(MEDIA_PREFIX)
            target = staging / "media" / f"{len(photos):08d}" if is_photo else staging / path
            if is_photo:
                photos.append((member.name[len(MEDIA_PREFIX) :], target))
        with _private_new(target) if target is not None else _Discard() as out:
            while chunk := source.read(_COPY_BUFFER):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        sums[member.name] = {"sha256": digest.hexdigest(), "size": size}
    if manifest is None:
        raise BackupDamaged("the backup is empty (no manifest)")
    if trailer is None:
        raise BackupDamaged("the backup is truncated: its checksum list (the last entry) is missing")
    _compare(manifest, sums, trailer)
    root = staging if staging is not None else Path()
    return StagedBackup(
        manifest=manifest,
        root=root,
        database=root / manifest.database_member,
        media=photos,
        index=[root / n for n in sorted(sums) if n.startswith(INDEX_PREFIX)],
        bytes_read=0,
    )


def _private_new(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


class _Discard:
    def __enter__(self) -> _Discard:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def write(self, data: bytes) -> int:
        return len(data)


def _parse_checksums(data: bytes) -> dict[str, Any]:
    try:
        trailer = json.loads(data)
        files = trailer["files"]
        if not isinstance(files, dict) or not isinstance(trailer["manifest_sha256"], str):
            raise ValueError("wrong shape")
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupDamaged(f"the backup's checksum list is unreadable ({exc})") from exc
    return trailer


def _compare(manifest: Manifest, sums: dict[str, dict[str, Any]], trailer: dict[str, Any]) -> None:
    listed: dict[str, Any] = trailer["files"]
    if trailer["manifest_sha256"] != sums[MANIFEST]["sha256"]:
        raise BackupDamaged("the backup's manifest does not match its checksum")
    missing = sorted(set(listed) - set(sums))
    extra = sorted(set(sums) - set(listed))
    if missing or extra:
        raise BackupDamaged(f"the backup's contents differ from its checksum list ({(missing + extra)[:3]})")
    for name, found in sums.items():
        if listed[name] != found:
            raise BackupDamaged(f"the backup is damaged: {name} does not match its checksum")
    if manifest.database_member not in sums:
        raise BackupDamaged("the backup holds no database")
    photos = sum(name.startswith(MEDIA_PREFIX) for name in sums)
    if photos != manifest.photos:
        raise BackupDamaged(f"the backup holds {photos} photos, its manifest says {manifest.photos}")


def verify_backup(src: Path, *, passphrase: str | None, progress: Progress = no_progress) -> Manifest:
    """Read the whole backup and check every sum, writing nothing; returns its manifest.

    Also refuses a backup this version could not restore (a newer schema)."""
    staged = read_backup(Path(src), passphrase, None, progress, lambda m: check_restorable(m, None))
    return staged.manifest
