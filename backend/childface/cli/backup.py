"""`childface backup DEST` and `childface restore SRC`.

The passphrase comes from `--passphrase-file` (its first line), else from
CHILDFACE_BACKUP_PASSPHRASE, else from a hidden prompt when a person is at the
terminal; never from a command-line value (`ps` would show it). `backup`
refuses to write an unencrypted file unless `--no-encrypt` says so.

Exit codes: 0 done, 1 the backup or restore failed or was refused (the reason
on stderr; nothing was written or changed), 2 usage or configuration errors.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from childface.cli import app, fail, get_settings, open_database
from childface.config import Settings
from childface.private_files import restrict_umask

PassphraseFile = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        help="File whose first line is the passphrase (default: CHILDFACE_BACKUP_PASSPHRASE).",
        dir_okay=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")]


class _Bars:
    """tqdm bars on stderr, one per stage of the work (none when stderr is not a terminal, or --json)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def __call__(self, stage: str, total: int | None, unit: str) -> Callable[[int], None]:
        self.close()
        if not self.enabled:
            return lambda n: None
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=stage, unit=unit, unit_scale=unit == "B", file=sys.stderr)
        return self._bar.update

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _read_passphrase_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the passphrase file {path}: {getattr(exc, 'strerror', None) or exc}")
    passphrase = text.splitlines()[0] if text else ""
    if not passphrase:
        fail(f"the passphrase file {path} is empty (its first line is the passphrase)")
    return passphrase


def _passphrase(settings: Settings, passphrase_file: Path | None, *, confirm: bool) -> str | None:
    """The passphrase from the file, the setting or (a person at the terminal) a prompt; None if none."""
    if passphrase_file is not None:
        return _read_passphrase_file(passphrase_file)
    if settings.backup_passphrase is not None and settings.backup_passphrase.get_secret_value():
        return settings.backup_passphrase.get_secret_value()
    if sys.stdin.isatty():
        return typer.prompt("backup passphrase", hide_input=True, confirmation_prompt=confirm)
    return None


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


@app.command()
def backup(
    dest: Annotated[
        Path, typer.Argument(help="The backup file to create, or a folder to create a dated one in.")
    ],
    passphrase_file: PassphraseFile = None,
    no_encrypt: Annotated[
        bool, typer.Option("--no-encrypt", help="Write the backup unencrypted (it holds biometric data).")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Back up the database, photos and index snapshots into one encrypted file, while servers run."""
    restrict_umask()
    settings = get_settings()
    if no_encrypt and passphrase_file is not None:
        fail("--no-encrypt and --passphrase-file contradict each other: choose one")
    passphrase = None if no_encrypt else _passphrase(settings, passphrase_file, confirm=True)
    if passphrase is None and not no_encrypt:
        fail(
            "backups are encrypted: set CHILDFACE_BACKUP_PASSPHRASE or give --passphrase-file "
            "(or write an unencrypted backup with --no-encrypt)"
        )
    from childface.services.backup import create_backup
    from childface.services.backup_archive import BackupError

    database = open_database(settings)
    bars = _Bars(enabled=not as_json and sys.stderr.isatty())
    try:
        result = create_backup(settings, database, dest, passphrase=passphrase, progress=bars)
    except BackupError as exc:
        bars.close()
        fail(str(exc), code=1)
    finally:
        database.dispose()
    bars.close()
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    manifest = result.manifest
    typer.echo(
        f"backup written: {result.path} ({_size(result.bytes)}, "
        f"{'encrypted' if result.encrypted else 'NOT encrypted'}) in {result.seconds:.1f} s"
    )
    typer.echo(
        f"  {manifest.database} schema {manifest.schema_revision}, audit seq {manifest.last_audit_seq}: "
        + ", ".join(f"{n} {table.replace('_', ' ')}" for table, n in manifest.counts.items())
    )
    for name, why in manifest.index_left_out.items():
        typer.echo(f"  index snapshot {name} not included ({why}): the restore rebuilds it")


@app.command()
def restore(
    src: Annotated[Path, typer.Argument(help="The backup file.", exists=True, dir_okay=False)],
    passphrase_file: PassphraseFile = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace a deployment that is not empty (everything in it is lost)."),
    ] = False,
    check: Annotated[
        bool, typer.Option("--check", help="Only read the whole backup and check every sum; change nothing.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Restore a backup into an empty deployment (the configured database, media and index folders).

    Every byte is checked before anything is changed; a damaged or truncated backup,
    a wrong passphrase or a backup from a newer version is refused."""
    from childface.services.backup_archive import BackupError, PassphraseNeeded, read_header

    restrict_umask()
    settings = get_settings()
    try:
        with src.open("rb") as fh:
            encrypted = read_header(fh).encrypted
    except BackupError as exc:
        fail(str(exc), code=1)
    except OSError as exc:
        fail(f"cannot read {src}: {exc.strerror or exc}")
    passphrase = _passphrase(settings, passphrase_file, confirm=False) if encrypted else None
    if encrypted and passphrase is None:
        fail(PassphraseNeeded.message, code=1)
    from childface.services.backup_restore import restore_backup
    from childface.services.backup_staging import verify_backup

    bars = _Bars(enabled=not as_json and sys.stderr.isatty())
    try:
        if check:
            manifest = verify_backup(src, passphrase=passphrase, progress=bars)
        else:
            result = restore_backup(settings, src, passphrase=passphrase, force=force, progress=bars)
    except BackupError as exc:
        bars.close()
        fail(str(exc), code=1)
    bars.close()
    if check:
        if as_json:
            typer.echo(manifest.to_json().decode())
        else:
            typer.echo(
                f"backup OK: {src}, made {manifest.created_at} by childface {manifest.childface_version}, "
                f"{manifest.database} schema {manifest.schema_revision}, {manifest.photos} photos; "
                "every sum checked"
            )
        return
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    schema = result.schema_before + (
        f" -> {result.schema_after}" if result.schema_after != result.schema_before else ""
    )
    typer.echo(
        f"restored {src} (made {result.manifest.created_at}): {result.photos} photos, schema {schema}, "
        f"in {result.seconds:.1f} s" + (" (the previous deployment was replaced)" if result.replaced else "")
    )
    for key, how in result.index.items():
        source = "from the backup" if how == "snapshot" else "rebuilt from the database"
        typer.echo(f"  index [{key}]: {source}")
