"""PostgreSQL's own tools for backups: `pg_dump` out, `pg_restore` + `psql` back in.

The tools are found on PATH; a missing one is refused with what to install. They
connect with the configured database URL turned into a libpq URI without its
password; the password goes in the child's environment (`PGPASSWORD`), never on
a command line that `ps` shows.

Restoring replaces everything in the database's `public` schema in ONE
transaction (`psql --single-transaction` with ON_ERROR_STOP): the tables,
views, sequences and types there are dropped and the dump's are created and
filled. Any error rolls all of it back, leaving the database as it was.
`pg_restore` writes the whole script before `psql` starts, so a dump it cannot
read never reaches the database.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from childface.services.backup_archive import BackupError

#: how long a restore waits for a lock before giving up (a process still connected)
_LOCK_TIMEOUT = "15s"
_STDERR_TAIL = 2000

#: runs first in the restore's transaction: empty the public schema (the dump re-creates it all)
_DROP_EVERYTHING = f"""
SET lock_timeout = '{_LOCK_TIMEOUT}';
DO $childface$
DECLARE r record;
BEGIN
  FOR r IN SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = 'public' AND c.relkind IN ('v', 'm', 'r', 'p', 'f', 'S')
           ORDER BY CASE c.relkind WHEN 'v' THEN 0 WHEN 'm' THEN 1 WHEN 'S' THEN 3 ELSE 2 END LOOP
    EXECUTE format(
      CASE r.relkind WHEN 'v' THEN 'DROP VIEW IF EXISTS public.%I CASCADE'
                     WHEN 'm' THEN 'DROP MATERIALIZED VIEW IF EXISTS public.%I CASCADE'
                     WHEN 'S' THEN 'DROP SEQUENCE IF EXISTS public.%I CASCADE'
                     WHEN 'f' THEN 'DROP FOREIGN TABLE IF EXISTS public.%I CASCADE'
                     ELSE 'DROP TABLE IF EXISTS public.%I CASCADE' END, r.relname);
  END LOOP;
  FOR r IN SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
           WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd') LOOP
    EXECUTE format('DROP TYPE IF EXISTS public.%I CASCADE', r.typname);
  END LOOP;
END
$childface$;
"""


def tool(name: str) -> str:
    """The path of a PostgreSQL client tool, or BackupError saying what to install."""
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} was not found on PATH: install the PostgreSQL client tools (Debian/Ubuntu: "
            "postgresql-client) of the server's major version or newer"
        )
    return found


def connection(url: str) -> tuple[str, dict[str, str]]:
    """(libpq URI without the password, environment for the tool) for a SQLAlchemy PostgreSQL URL."""
    parsed = make_url(url)
    env = dict(os.environ)
    for name in ("PGPASSWORD", "PGSERVICE", "PGOPTIONS"):
        env.pop(name, None)  # the URL says where to go; a stray variable must not redirect the tool
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
    env.setdefault("PGCONNECT_TIMEOUT", "10")
    uri = parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return uri, env


def _failure(what: str, stderr: bytes | str) -> BackupError:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    return BackupError(f"{what} failed: {text.strip()[-_STDERR_TAIL:] or 'no message'}")


def dump(url: str, out: Path, *, snapshot: str) -> None:
    """`pg_dump` of the database as of an exported snapshot (`pg_export_snapshot()`), custom format,
    uncompressed (the backup container decides about the bytes), without owners and grants."""
    uri, env = connection(url)
    command = [
        tool("pg_dump"), "--format=custom", "--compress=0", "--no-owner", "--no-privileges",
        f"--snapshot={snapshot}", f"--file={out}", f"--dbname={uri}",
    ]
    done = subprocess.run(command, env=env, capture_output=True, check=False)
    if done.returncode != 0:
        raise _failure("pg_dump", done.stderr)


def check_tools_for_restore() -> None:
    """Refuse before anything is read when a tool the restore needs is missing."""
    tool("pg_restore")
    tool("psql")


def restore(url: str, dump_file: Path, scratch: Path) -> None:
    """Replace the database's contents with the dump, in one transaction (see the module docstring).

    The dump becomes a SQL script in `scratch` first: `psql` runs it only once `pg_restore` has
    turned all of it out, so a dump it cannot read never reaches the database.
    """
    uri, env = connection(url)
    script = scratch / "restore.sql"
    done = subprocess.run(
        [tool("pg_restore"), "--no-owner", "--no-privileges", f"--file={script}", str(dump_file)],
        env=env, capture_output=True, check=False,
    )
    if done.returncode != 0:
        raise _failure("pg_restore (reading the dump; nothing was changed)", done.stderr)
    try:
        done = subprocess.run(
            [tool("psql"), "--no-psqlrc", "--quiet", "--single-transaction", "--set=ON_ERROR_STOP=1",
             f"--dbname={uri}", f"--command={_DROP_EVERYTHING}", f"--file={script}"],
            env=env, capture_output=True, check=False,
        )
    finally:
        script.unlink(missing_ok=True)
    if done.returncode != 0:
        raise _failure("restoring into PostgreSQL (rolled back: nothing was changed)", done.stderr)
