"""Staff accounts, their sign-in sessions, and API keys for other systems.

Passwords are hashed with argon2id. API keys and session tokens are 256-bit
random strings: only their sha256 is stored (a slow hash buys nothing for
keys that cannot be guessed), and the plaintext is shown once at creation.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select

from childface.db.models import ApiKey, Role, StaffSession, User
from childface.db.session import Actor, Database

API_KEY_SCOPES = ("recognize", "enroll", "admin")
API_KEY_PREFIX = "cfk_"
MIN_PASSWORD_LENGTH = 8

_hasher = PasswordHasher()


class AccountError(ValueError):
    """A request about accounts that cannot be honoured; `code` is stable for clients."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def create_user(*, db: Database, actor: Actor, username: str, password: str, role: str) -> User:
    username = username.strip()
    if not username:
        raise AccountError("invalid_username", "username must not be empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError("weak_password", f"password must have at least {MIN_PASSWORD_LENGTH} characters")
    try:
        role_value = Role(role)
    except ValueError:
        raise AccountError(
            "invalid_role", f"role must be one of {', '.join(r.value for r in Role)}"
        ) from None
    with db.unit_of_work(actor) as uow:
        if uow.session.scalar(select(User.id).where(User.username == username)) is not None:
            raise AccountError("username_taken", f"user {username!r} already exists")
        user = User(username=username, password_hash=_hasher.hash(password), role=role_value)
        uow.session.add(user)
        uow.session.flush()
        uow.audit(
            "user.created",
            target_type="user",
            target_id=user.id,
            after={"username": username, "role": role_value.value},
        )
    return user


@dataclass(frozen=True)
class IssuedKey:
    """A new API key: `key` is the only time the plaintext exists outside the caller."""

    id: int
    name: str
    scopes: list[str]
    key: str


def create_api_key(*, db: Database, actor: Actor, name: str, scopes: list[str]) -> IssuedKey:
    name = name.strip()
    if not name:
        raise AccountError("invalid_name", "an API key needs a name")
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
    max_failures: int,
    lockout: timedelta,
) -> tuple[str, User]:
    """Check a password and open a session; returns (bearer token, user).

    After `max_failures` wrong passwords in a row the account is locked for
    `lockout`; the same generic error is raised for unknown users, wrong
    passwords and inactive accounts so sign-in does not reveal who exists.
    """
    now = datetime.now(UTC)
    with db.transaction() as session:
        user = session.scalar(select(User).where(User.username == username.strip()))
        if user is None or not user.active:
            _hasher.hash(password)  # spend the same time as a real check
            raise AccountError("invalid_credentials", "wrong username or password")
        if user.locked_until is not None and user.locked_until > now:
            raise AccountError(
                "account_locked",
                "too many failed sign-ins; try again after "
                f"{user.locked_until.strftime('%H:%M UTC')}",
            )
        try:
            _hasher.verify(user.password_hash, password)
        except (VerificationError, InvalidHashError):
            user.failed_logins += 1
            if user.failed_logins >= max_failures:
                user.locked_until = now + lockout
                user.failed_logins = 0
            session.commit()
            raise AccountError("invalid_credentials", "wrong username or password") from None
        user.failed_logins = 0
        user.locked_until = None
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = _hasher.hash(password)
        token = secrets.token_urlsafe(32)
        session.add(StaffSession(token_hash=_sha256(token), user_id=user.id, expires_at=now + ttl))
        session.execute(delete(StaffSession).where(StaffSession.expires_at < now))
    return token, user


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
    with db.unit_of_work(actor) as uow:
        user = uow.session.scalar(select(User).where(User.username == username).with_for_update())
        if user is None or not user.active:
            raise AccountError("invalid_credentials", "wrong username or password")
        try:
            _hasher.verify(user.password_hash, current)
        except (VerificationError, InvalidHashError):
            raise AccountError("wrong_password", "the current password is wrong") from None
        user.password_hash = _hasher.hash(new)
        uow.session.execute(delete(StaffSession).where(StaffSession.user_id == user.id))
        uow.audit(
            "user.password_changed", target_type="user", target_id=user.id, after={"username": username}
        )


def ensure_first_admin(*, db: Database, actor: Actor, username: str = "admin") -> str | None:
    """On a database with no staff account, create an admin with a random password and return it.

    Returns None when any account exists: a first start must leave someone able
    to sign in, and nothing more (the password is shown once, like an API key).
    """
    with db.session() as session:
        if session.scalar(select(User.id).limit(1)) is not None:
            return None
    password = secrets.token_urlsafe(12)
    try:
        create_user(db=db, actor=actor, username=username, password=password, role=Role.admin.value)
    except AccountError:
        return None  # another process created the first account at the same moment
    return password
