"""Which process owns a pending write, a temporary file or a scratch folder, and whether it still runs.

Crash recovery may only remove what a dead process left behind, never what a
live writer is still using. Each such thing therefore names its owner:
journal entries and import runs store `current_owner()` ("host:pid"); file and
folder names carry `scratch_tag()` ("cf-<host hash>-<pid>"), since host names
may hold characters a file name should not.

A pid says little on its own: after a restart (a container's server is often
the same pid every time) it may belong to another process. An owner counts as
alive only when a process with that pid runs on this host AND started no later
than the owned thing was made. Owners on other hosts cannot be checked from
here: callers fall back to an age limit for those (`None` = unknown).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from datetime import UTC, datetime

import psutil

#: a process that started this long after the owned thing was made is not its owner (clock granularity)
_START_TOLERANCE_S = 1.0
_TAG = re.compile(r"cf-([0-9a-f]{8})-(\d+)-")


def current_owner() -> str:
    """This process as an owner: "host:pid" (read on each call: a forked child is another owner)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _host_hash(host: str) -> str:
    return hashlib.sha256(host.encode()).hexdigest()[:8]


def scratch_tag() -> str:
    """The start of a scratch file or folder name that tells its owner: "cf-<host hash>-<pid>-"."""
    return f"cf-{_host_hash(socket.gethostname())}-{os.getpid()}-"


def _pid_alive(pid: int, made_at: datetime) -> bool:
    try:
        started = psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # it exists; we cannot tell more
    return started <= made_at.timestamp() + _START_TOLERANCE_S


def owner_alive(owner: str | None, made_at: datetime) -> bool | None:
    """Whether the process `owner` ("host:pid") that made something at `made_at` still runs.

    None when it cannot be known here (another host, or no owner recorded).
    """
    if not owner or ":" not in owner:
        return None
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    if made_at.tzinfo is None:
        made_at = made_at.replace(tzinfo=UTC)
    return _pid_alive(int(pid), made_at)


def scratch_owner_alive(name: str, made_at: datetime) -> bool | None:
    """`owner_alive` for a file or folder name that carries a `scratch_tag()`; None when it has none."""
    found = _TAG.search(name)
    if found is None or found.group(1) != _host_hash(socket.gethostname()):
        return None
    return _pid_alive(int(found.group(2)), made_at)
