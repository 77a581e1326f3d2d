"""Sign-in throttling per client address and per (client address, account name).

Failed sign-ins are counted in `login_throttles`, shared by every API process.
Two counters move on each failure: one for the address ("addr:<ip>") and one
for the address and the name typed ("acct:<ip>:<name>"). When either reaches
its limit within the window, sign-in from that address (or for that name from
that address) is refused for one window, before any password is checked, and
the refusal is the same whether the name exists or not. Nothing is counted per
account alone: a stranger can slow down their own address, never lock staff
out of theirs.

Only sha256 digests of the keys are stored: a name typed at the sign-in form
may be a mistyped password.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import case, delete, literal, null, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from childface.config import Settings
from childface.db.models import LoginThrottle
from childface.db.session import Database

#: expired rows are pruned at most this often per process (a scan of the table under the write lock)
_PRUNE_EVERY_S = 60.0
_pruned_at = 0.0
_prune_guard = threading.Lock()


@dataclass(frozen=True)
class ThrottlePolicy:
    """How many failures are allowed within `window` before an address (or address + name) must wait."""

    max_failures_per_address: int
    max_failures_per_account_address: int
    window: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> ThrottlePolicy:
        return cls(
            max_failures_per_address=settings.login_max_failures_per_address,
            max_failures_per_account_address=settings.login_max_failures_per_account_address,
            window=timedelta(minutes=settings.login_throttle_window_minutes),
        )


@dataclass(frozen=True)
class ThrottleKeys:
    """The two counter keys (sha256 hex) of one sign-in attempt."""

    address: str
    account: str


def normalise_username(username: str) -> str:
    """The form of a name used for throttling: case and Unicode variants of one name count together."""
    return unicodedata.normalize("NFKC", username).strip().casefold()


def keys_for(address: str, username: str) -> ThrottleKeys:
    return ThrottleKeys(
        address=_digest(f"addr:{address}"),
        account=_digest(f"acct:{address}:{normalise_username(username)}"),
    )


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def retry_after(*, db: Database, keys: ThrottleKeys, now: datetime) -> int | None:
    """Seconds until these keys may try again, or None when they may try now (a read, no lock).

    A cheap first look, so a throttled flood takes no write lock; `reserve` decides.
    """
    with db.session() as session:
        blocked = session.scalar(
            select(LoginThrottle.blocked_until)
            .where(LoginThrottle.key.in_((keys.address, keys.account)), LoginThrottle.blocked_until > now)
            .order_by(LoginThrottle.blocked_until.desc())
            .limit(1)
        )
    if blocked is None:
        return None
    return max(1, math.ceil((blocked - now).total_seconds()))


def reserve(*, session: Session, keys: ThrottleKeys, policy: ThrottlePolicy, now: datetime) -> int | None:
    """Count this attempt as a failure on both keys BEFORE its password is checked; None when allowed.

    Counting first is what holds the limit under parallel attempts: a burst of 40
    at once gets `limit` checks, the rest are refused without hashing. Each count is
    one atomic conditional upsert that only moves while the key is under its limit;
    a key at its limit is blocked for one window and the seconds to wait are
    returned, with neither count moved. A
    successful sign-in gives its count back (`release`). Commit the caller's
    transaction either way: a refusal leaves the key blocked for one window.
    """
    _prune(session, policy, now)
    for key, limit in (
        (keys.address, policy.max_failures_per_address),
        (keys.account, policy.max_failures_per_account_address),
    ):
        if not _count(session, key, limit, policy.window, now):
            session.rollback()  # this attempt counts on neither key; the block below is all it leaves
            session.execute(
                LoginThrottle.__table__.update()
                .where(LoginThrottle.key == key)
                .values(blocked_until=now + policy.window)
            )
            return max(1, math.ceil(policy.window.total_seconds()))
    return None


def release(*, session: Session, keys: ThrottleKeys) -> None:
    """A successful sign-in: its reserved count goes back, and the address+name counter is cleared."""
    table = LoginThrottle.__table__
    session.execute(
        table.update()
        .where(table.c.key == keys.address, table.c.failures > 0)
        .values(failures=table.c.failures - 1)
    )
    session.execute(delete(LoginThrottle).where(LoginThrottle.key == keys.account))


def _count(session: Session, key: str, limit: int, window: timedelta, now: datetime) -> bool:
    """Add one failure to `key` if it is under `limit` (a new window when the last one ended).

    Returns whether it was counted: False when the key already has `limit` failures in its window.
    """
    table = LoginThrottle.__table__
    insert = (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(table)
    expired = table.c.window_started_at <= now - window
    started = literal(now, table.c.window_started_at.type)
    statement = (
        insert.values(key=key, failures=1, window_started_at=now, blocked_until=None)
        .on_conflict_do_update(
            index_elements=[table.c.key],
            set_={
                "failures": case((expired, 1), else_=table.c.failures + 1),
                "window_started_at": case((expired, started), else_=table.c.window_started_at),
                "blocked_until": case((expired, null()), else_=table.c.blocked_until),
            },
            where=or_(expired, table.c.failures < limit),
        )
        .returning(table.c.failures)
    )
    return session.execute(statement).scalar_one_or_none() is not None


def _prune(session: Session, policy: ThrottlePolicy, now: datetime) -> None:
    """Delete counters whose window and block are over, at most once a minute per process."""
    global _pruned_at
    with _prune_guard:
        if time.monotonic() - _pruned_at < _PRUNE_EVERY_S:
            return
        _pruned_at = time.monotonic()
    session.execute(
        delete(LoginThrottle).where(
            LoginThrottle.window_started_at <= now - policy.window,
            or_(LoginThrottle.blocked_until.is_(None), LoginThrottle.blocked_until <= now),
        )
    )
