"""Staff accounts, their sign-in sessions, and API keys for other systems.

Passwords are hashed with argon2id, always outside write transactions (a hash
takes a fifth of a second; on SQLite a write transaction holds the one write
lock of the database). API keys and session tokens are 256-bit
random strings: only their sha256 is stored (a slow hash buys nothing for
keys that cannot be guessed), and the plaintext is shown once at creation.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from childface.db.models import ApiKey, Role, StaffSession, User
from childface.db.session import Actor, Database
from childface.services import login_throttle
from childface.services.errors import InvalidInput
from childface.services.login_throttle import ThrottlePolicy
from childface.services.text_input import clean_field, normalise

API_KEY_SCOPES = ("recognize", "enroll", "admin")
API_KEY_PREFIX = "cfk_"
MIN_PASSWORD_LENGTH = 8

_hasher = PasswordHasher()
#: argon2 runs at most this many at once: a flood of sign-ins queues here instead of taking every
#: core (and 64 MiB per hash) from the requests of signed-in staff
_hash_slots = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) // 2))


class AccountError(ValueError):
    """A request about accounts that cannot be honoured; `code` is stable for clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TooManyAttempts(AccountError):
    """Sign-in refused for a while, before any password check; the same for every name."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(
            "too_many_attempts", f"too many failed sign-ins; try again in {retry_after_s} seconds"
        )
        self.retry_after_s = retry_after_s


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _account_text(code: str, field: str, value: str) -> str:
    """A user or key name through the shared text check (services.text_input), as an AccountError."""
    try:
        cleaned = clean_field(field, value, max_length=100, required=True)
    except InvalidInput as exc:
        raise AccountError(code, exc.message) from None
    assert cleaned is not None
    return cleaned


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise AccountError(
            "invalid_role", f"role must be one of {', '.join(r.value for r in Role)}"
        ) from None


def create_user(
    *,
    db: Database,
    actor: Actor,
    username: str,
    password: str,
    role: str,
    must_change_password: bool = False,
) -> User:
    """A new staff account; with `must_change_password` it may only change its password until it does."""
    username = _account_text("invalid_username", "username", username)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError("weak_password", f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    role_value = _role(role)
    password_hash = _hash(password)  # slow: before the write transaction, never inside it
    with db.unit_of_work(actor) as uow:
        if uow.session.scalar(select(User.id).where(User.username == username)) is not None:
            raise AccountError("username_taken", f"user {username!r} already exists")
        user = User(
            username=username,
            password_hash=password_hash,
            role=role_value,
            must_change_password=must_change_password,
        )
        uow.session.add(user)
        uow.session.flush()
        uow.audit(
            "user.created",
            target_type="user",
            target_id=user.id,
            after={
                "username": username,
                "role": role_value.value,
                "must_change_password": must_change_password,
            },
        )
    return user


def _locked_user(session: Session, user_id: int) -> User:
    user = session.scalar(select(User).where(User.id == user_id).with_for_update())
    if user is None:
        raise AccountError("not_found", f"no staff account with id {user_id}")
    return user


def update_user(
    *, db: Database, actor: Actor, user_id: int, role: str | None = None, active: bool | None = None
) -> User:
    """Change an account's role and/or whether it may sign in; deactivation ends its sessions.

    A request that changes nothing returns the account as it is (and writes no audit event).
    Refused with `last_admin` (409) when no active admin would be left: somebody
    must always be able to manage accounts. The active admins are locked first,
    so two admins demoting each other at the same moment cannot both succeed.
    """
    role_value = _role(role) if role is not None else None
    try:
        return _update_user(db=db, actor=actor, user_id=user_id, role=role_value, active=active)
    except _Unchanged as unchanged:
        return unchanged.user


class _Unchanged(Exception):
    """Leaves a unit of work that found nothing to change (rolled back, no audit event)."""

    def __init__(self, user: User) -> None:
        self.user = user


def _update_user(*, db: Database, actor: Actor, user_id: int, role: Role | None, active: bool | None) -> User:
    with db.unit_of_work(actor) as uow:
        session = uow.session
        admins = set(
            session.scalars(
                select(User.id).where(User.role == Role.admin, User.active.is_(True)).with_for_update()
            )
        )
        user = _locked_user(session, user_id)
        before = {"role": user.role.value, "active": user.active}
        if role is not None:
            user.role = role
        if active is not None:
            user.active = active
        after = {"role": user.role.value, "active": user.active}
        if after == before:
            session.expunge(user)  # keeps its loaded state through the rollback
            raise _Unchanged(user)
        if user.id in admins and not (user.role == Role.admin and user.active) and len(admins) == 1:
            raise AccountError(
                "last_admin",
                f"{user.username!r} is the last active admin: make another account admin first",
            )
        if not user.active:
            session.execute(delete(StaffSession).where(StaffSession.user_id == user.id))
        uow.audit(
            "user.updated",
            target_type="user",
            target_id=user.id,
            before={"username": user.username, **before},
            after={"username": user.username, **after},
        )
    return user


def reset_password(
    *, db: Database, actor: Actor, user_id: int | None = None, username: str | None = None
) -> str:
    """Give an account a random one-time password and return it; its sessions end.

    The account must change the password at its next sign-in (`must_change_password`).
    The audit event says that the password was reset, never what it is.
    """
    password = secrets.token_urlsafe(12)
    password_hash = _hash(password)  # slow: before the write transaction
    with db.unit_of_work(actor) as uow:
        if user_id is None:
            found = uow.session.scalar(select(User.id).where(User.username == normalise(username or "")))
            if found is None:
                raise AccountError("not_found", f"no staff account named {username!r}")
            user_id = found
        user = _locked_user(uow.session, user_id)
        user.password_hash = password_hash
        user.must_change_password = True
        user.failed_logins = 0
        uow.session.execute(delete(StaffSession).where(StaffSession.user_id == user.id))
        uow.audit(
            "user.password_reset",
            target_type="user",
            target_id=user.id,
            after={"username": user.username, "must_change_password": True},
        )
    return password


@dataclass(frozen=True)
class IssuedKey:
    """A new API key: `key` is the only time the plaintext exists outside the caller."""

    id: int
    name: str
    scopes: list[str]
    key: str


def create_api_key(*, db: Database, actor: Actor, name: str, scopes: list[str]) -> IssuedKey:
    name = _account_text("invalid_name", "API key name", name)
    unknown = sorted(set(scopes) - set(API_KEY_SCOPES))
    if unknown or not scopes:
        raise AccountError(
            "invalid_scopes",
            f"scopes must be a non-empty subset of {', '.join(API_KEY_SCOPES)}"
            + (f" (unknown: {', '.join(unknown)})" if unknown else ""),
        )
    plaintext = API_KEY_PREFIX + secrets.token_urlsafe(32)
    scopes = sorted(set(scopes))
    with db.unit_of_work(actor) as uow:
        if uow.session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
            raise AccountError("name_taken", f"an API key named {name!r} already exists")
        key = ApiKey(
            name=name,
            prefix=plaintext[:10],
            key_hash=_sha256(plaintext),
            scopes=scopes,
            created_by=str(actor),
        )
        uow.session.add(key)
        uow.session.flush()
        uow.audit(
            "api_key.created",
            target_type="api_key",
            target_id=key.id,
            after={"name": name, "scopes": scopes, "prefix": key.prefix},
        )
    return IssuedKey(id=key.id, name=name, scopes=scopes, key=plaintext)


def revoke_api_key(*, db: Database, actor: Actor, key_id: int) -> ApiKey:
    with db.unit_of_work(actor) as uow:
        key = uow.session.get(ApiKey, key_id)
        if key is None:
            raise AccountError("not_found", f"no API key with id {key_id}")
        key.revoked = True
        uow.audit(
            "api_key.revoked",
            target_type="api_key",
            target_id=key.id,
            before={"revoked": False},
            after={"revoked": True},
        )
    return key


def find_api_key(*, db: Database, plaintext: str) -> ApiKey | None:
    """The live (not revoked) key with this plaintext, or None."""
    with db.session() as session:
        key = session.scalar(select(ApiKey).where(ApiKey.key_hash == _sha256(plaintext)))
    if key is None or key.revoked:
        return None
    return key


def login(
    *,
    db: Database,
    username: str,
    password: str,
    ttl: timedelta,
    client_address: str,
    policy: ThrottlePolicy,
) -> tuple[str, User]:
    """Check a password and open a session; returns (bearer token, user).

    Unknown names, inactive accounts and wrong passwords get the same error
    after the same work (one argon2 verify), so sign-in does not reveal who
    exists. Each attempt is counted per client address and per (address, name)
    before its password is checked, and given back when it succeeds
    (`login_throttle`); over the limit, `TooManyAttempts` is raised without any
    check, so parallel attempts cannot get past it. The password is verified outside any write
    transaction; the write that follows is short and re-checks that the hash
    did not change meanwhile.
    """
    now = datetime.now(UTC)
    keys = login_throttle.keys_for(client_address, username)
    wait = login_throttle.retry_after(db=db, keys=keys, now=now)
    if wait is None:
        with db.transaction() as session:  # short: counted before the check, so a burst cannot pass
            wait = login_throttle.reserve(session=session, keys=keys, policy=policy, now=now)
    if wait is not None:
        raise TooManyAttempts(wait)
    with db.session() as session:
        # the stored form of a name (create_user keeps names NFKC-normalised and stripped)
        user = session.scalar(select(User).where(User.username == normalise(username)))
    known = user is not None and user.active
    checked_hash = user.password_hash if known else _dummy_hash()
    valid = _verify(checked_hash, password) and known
    new_hash = _hash(password) if valid and _hasher.check_needs_rehash(checked_hash) else None
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)  # the check may have waited for a hashing slot
    with db.transaction() as session:
        if valid:
            current = session.execute(
                select(User.password_hash, User.active).where(User.id == user.id)
            ).one_or_none()
            valid = current is not None and current.active and current.password_hash == checked_hash
        if not valid:  # the failure was counted by `reserve`
            if known:
                # one atomic statement: parallel failures are never lost (no read-modify-write)
                session.execute(
                    update(User).where(User.id == user.id).values(failed_logins=User.failed_logins + 1)
                )
        else:
            changes: dict[str, object] = {"failed_logins": 0}
            if new_hash is not None:
                changes["password_hash"] = new_hash
            session.execute(update(User).where(User.id == user.id).values(**changes))
            login_throttle.release(session=session, keys=keys)
            session.add(StaffSession(token_hash=_sha256(token), user_id=user.id, expires_at=now + ttl))
            session.execute(delete(StaffSession).where(StaffSession.expires_at < now))
    if not valid:
        raise AccountError("invalid_credentials", "wrong username or password")
    return token, user


def _hash(password: str) -> str:
    with _hash_slots:
        return _hasher.hash(password)


def _verify(password_hash: str, password: str) -> bool:
    with _hash_slots:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


_dummy: tuple[PasswordHasher, str] | None = None


def _dummy_hash() -> str:
    """A hash of a random password, made with the current hasher: an unknown name costs one real verify."""
    global _dummy
    if _dummy is None or _dummy[0] is not _hasher:
        _dummy = (_hasher, _hash(secrets.token_urlsafe(16)))
    return _dummy[1]


def user_for_token(*, db: Database, token: str) -> User | None:
    """The active user whose unexpired session this token opens, or None."""
    with db.session() as session:
        row = session.execute(
            select(StaffSession, User)
            .join(User, StaffSession.user_id == User.id)
            .where(StaffSession.token_hash == _sha256(token))
        ).first()
    if row is None:
        return None
    staff_session, user = row
    if staff_session.expires_at <= datetime.now(UTC) or not user.active:
        return None
    return user


def logout(*, db: Database, token: str) -> None:
    with db.transaction() as session:
        session.execute(delete(StaffSession).where(StaffSession.token_hash == _sha256(token)))


def change_password(*, db: Database, actor: Actor, username: str, current: str, new: str) -> None:
    """Replace a user's password after checking the current one; every other session ends.

    The audit event says that the password changed, never what it was or is.
    """
    if len(new) < MIN_PASSWORD_LENGTH:
        raise AccountError("weak_password", f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    # both hashes are computed before the write transaction; it re-checks that nothing changed meanwhile
    with db.session() as session:
        user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.active:
        raise AccountError("invalid_credentials", "wrong username or password")
    if not _verify(user.password_hash, current):
        raise AccountError("wrong_password", "the current password is wrong")
    if new == current:
        raise AccountError("weak_password", "choose a new password that differs from the current one")
    new_hash = _hash(new)
    with db.unit_of_work(actor) as uow:
        row = uow.session.scalar(select(User).where(User.id == user.id).with_for_update())
        if row is None or not row.active or row.password_hash != user.password_hash:
            raise AccountError("conflict", "the account changed while the password was checked; try again")
        row.password_hash = new_hash
        row.must_change_password = False
        uow.session.execute(delete(StaffSession).where(StaffSession.user_id == row.id))
        uow.audit(
            "user.password_changed", target_type="user", target_id=row.id, after={"username": username}
        )


def ensure_first_admin(*, db: Database, actor: Actor, username: str = "admin") -> str | None:
    """On a database with no staff account, create an admin with a random password and return it.

    Returns None when any account exists: a first start must leave someone able
    to sign in, and nothing more (the password is shown once, like an API key,
    and must be changed at the first sign-in).
    """
    with db.session() as session:
        if session.scalar(select(User.id).limit(1)) is not None:
            return None
    password = secrets.token_urlsafe(12)
    try:
        create_user(
            db=db,
            actor=actor,
            username=username,
            password=password,
            role=Role.admin.value,
            must_change_password=True,
        )
    except AccountError:
        return None  # another process created the first account at the same moment
    return password
