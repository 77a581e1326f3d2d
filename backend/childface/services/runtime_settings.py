"""Settings an administrator changes while the system runs: the recognition decision thresholds.

The server's configuration (`Settings`, from the environment) gives each
setting its configured value; an admin may override the ones in `ADJUSTABLE`
(Settings page, `PATCH /admin/settings`). An override is a row of
`runtime_settings`, written in one unit of work with one `settings.changed`
audit event (before and after); setting a value back to `None` removes the
override, and the configured value applies again.

Every process follows the changes without a restart (`EffectiveSettings`):
it piggy-backs on the audit feed that each process already reads before every
recognition to keep its index current (`Runtime.current_gallery`). When the
feed has moved, the events that moved it are checked for `settings.changed`,
and only then are the overrides read again. A process therefore decides with
the new thresholds from its first recognition after the change is committed
(on PostgreSQL, once no older transaction is still open: the feed's safe
watermark).
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from childface.config import Settings
from childface.db.models import AuditEvent, RuntimeSetting
from childface.db.session import Actor, Database
from childface.services.errors import InvalidInput

log = logging.getLogger(__name__)

SETTINGS_CHANGED = "settings.changed"
#: the settings an admin may change at run time (all read per recognition, none needs a restart)
ADJUSTABLE = ("accept_threshold", "review_threshold", "match_margin", "top_k")
#: PostgreSQL advisory lock: one change at a time, so two admins cannot together break review <= accept
_LOCK_KEY = zlib.crc32(b"childface.runtime_settings") - 2**31


@dataclass(frozen=True)
class Override:
    value: Any
    updated_by: str
    updated_at: datetime


def stored_overrides(session: Session) -> dict[str, Override]:
    """The overrides in the database (adjustable keys only; a key no longer adjustable is ignored)."""
    rows = session.scalars(select(RuntimeSetting).where(RuntimeSetting.key.in_(ADJUSTABLE)))
    return {r.key: Override(r.value, r.updated_by, r.updated_at) for r in rows}


def validated(base: Settings, values: dict[str, Any]) -> Settings:
    """`base` with `values` applied, checked like the configuration itself (ranges, review <= accept).

    Raises InvalidInput (code `invalid_settings`) with a message for people.
    """
    _refuse_unknown(values)
    try:
        # model_validate runs every field and model check without reading the environment again
        return Settings.model_validate({**base.model_dump(), **values})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()))
            message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise InvalidInput("; ".join(problems), code="invalid_settings") from None


def _refuse_unknown(keys: Iterable[str]) -> None:
    unknown = sorted(set(keys) - set(ADJUSTABLE))
    if unknown:
        raise InvalidInput(
            f"{', '.join(unknown)} cannot be changed at run time (adjustable: {', '.join(ADJUSTABLE)})",
            code="invalid_settings",
        )


def effective(base: Settings, overrides: dict[str, Override]) -> Settings:
    """`base` with the stored overrides; overrides that no longer fit the configuration are ignored.

    That happens only when the configured values changed since (e.g. a configured
    review threshold now above an overridden accept threshold): the process then
    runs on its configuration, and says so in its log.
    """
    if not overrides:
        return base
    values = {key: o.value for key, o in overrides.items()}
    try:
        return validated(base, values)
    except InvalidInput as exc:
        log.warning("run-time settings %s ignored: they do not fit the configuration (%s)", values, exc)
        return base


def change_settings(*, db: Database, actor: Actor, base: Settings, changes: dict[str, Any]) -> bool:
    """Apply `changes` (key -> new value, or None: back to the configured value); False if none differs.

    One unit of work: the override rows and one `settings.changed` event with the
    effective values of the changed keys before and after. The result is checked
    as a whole (ranges, review <= accept) against the overrides in force at
    commit time; a refusal (InvalidInput, `invalid_settings`) changes nothing.
    """
    _refuse_unknown(changes)
    try:
        with db.unit_of_work(actor) as uow:
            session = uow.session
            if not db.is_sqlite:  # SQLite: the writer lock (BEGIN IMMEDIATE) serialises changes already
                session.execute(select(func.pg_advisory_xact_lock(_LOCK_KEY)))
            stored = stored_overrides(session)
            values = {key: o.value for key, o in stored.items()}
            before = effective(base, stored)
            changed = [k for k in changes if (stored[k].value if k in stored else None) != changes[k]]
            if not changed:
                raise _NothingChanged
            for key in changed:
                if changes[key] is None:
                    values.pop(key)
                else:
                    values[key] = changes[key]
            after = validated(base, values)
            for key in changed:
                row = session.get(RuntimeSetting, key)
                if changes[key] is None:
                    session.delete(row)
                elif row is None:
                    session.add(RuntimeSetting(key=key, value=changes[key], updated_by=str(actor)))
                else:
                    row.value, row.updated_by = changes[key], str(actor)
            uow.audit(
                SETTINGS_CHANGED,
                target_type="settings",
                before={k: getattr(before, k) for k in changed},
                after={k: getattr(after, k) for k in changed},
            )
    except _NothingChanged:
        return False
    return True


class _NothingChanged(Exception):
    """Rolls back a unit of work that would only repeat the values in force."""


class EffectiveSettings:
    """The settings in force in one process: its configuration, the thresholds the current embedding
    model carries (services/embedding_models.py), then the stored overrides, each over the one before.

    `current` is a plain attribute read (no database access); `follow` and
    `reload` refresh it. Thread-safe.
    """

    def __init__(self, base: Settings) -> None:
        self._base = base
        #: the current embedding model's own thresholds (Settings names), {} when it has none
        self._model: dict[str, float] = {}
        self._overrides: dict[str, Override] = {}
        self.current = base
        #: audit seq up to which `settings.changed` events are reflected (None: not started)
        self._seen: int | None = None
        self._lock = threading.Lock()

    @property
    def base(self) -> Settings:
        """The configured settings (environment, `.env`), without run-time overrides."""
        return self._base

    @base.setter
    def base(self, settings: Settings) -> None:
        with self._lock:
            self._base = settings
            self.current = effective(self.model_base, self._overrides)

    @property
    def model_base(self) -> Settings:
        """The configuration with the current model's thresholds: what applies without overrides."""
        if not self._model:
            return self._base
        try:
            return validated(self._base, self._model)
        except InvalidInput as exc:
            log.warning("the current model's thresholds %s ignored: %s", self._model, exc)
            return self._base

    def set_model_thresholds(self, thresholds: dict[str, float]) -> None:
        """The current embedding model changed, or its thresholds did (no database access)."""
        with self._lock:
            self._model = dict(thresholds)
            self.current = effective(self.model_base, self._overrides)

    @property
    def overrides(self) -> dict[str, Override]:
        return dict(self._overrides)

    def reload(self, db: Database) -> Settings:
        """Read the overrides now (after this process changed them, or at start)."""
        with self._lock, db.session() as session:
            self._overrides = stored_overrides(session)
            self.current = effective(self.model_base, self._overrides)
            return self.current

    def start(self, db: Database, watermark: int) -> None:
        """Load the overrides; the feed has been applied up to `watermark` (the index's)."""
        self.reload(db)
        with self._lock:
            self._seen = watermark  # every change at or below it is in the rows just read

    def follow(self, db: Database, watermark: int) -> None:
        """The audit feed is applied up to `watermark`: reload if a settings change came with it."""
        seen = self._seen
        if seen is None or watermark <= seen:
            return  # nothing new: no database access on the common path
        with db.session() as session:
            changed = session.scalar(
                select(AuditEvent.seq)
                .where(AuditEvent.action == SETTINGS_CHANGED)
                .where(AuditEvent.seq > seen, AuditEvent.seq <= watermark)
                .limit(1)
            )
        if changed is not None:
            self.reload(db)
            log.info("run-time settings changed (event %d): now %s", changed, self.summary())
        with self._lock:
            self._seen = max(self._seen or 0, watermark)

    def summary(self) -> str:
        return ", ".join(f"{key} {getattr(self.current, key)}" for key in ADJUSTABLE)
