"""Staff accounts, sign-in with lockout, API keys — on both back ends."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from childface.db import Actor, Database
from childface.db.models import ApiKey, AuditEvent, User
from childface.services import accounts

CLI = Actor("system", "cli")


def _login(database: Database, password: str) -> tuple[str, User]:
    return accounts.login(
        db=database,
        username="maria",
        password=password,
        ttl=timedelta(hours=1),
        max_failures=3,
        lockout=timedelta(minutes=15),
    )


def test_user_password_is_hashed_with_argon2(database: Database) -> None:
    accounts.create_user(db=database, actor=CLI, username="maria", password="s3cret-pass", role="staff")
    with database.session() as session:
        user = session.scalar(select(User))
        event = session.scalar(select(AuditEvent))
    assert user.password_hash.startswith("$argon2id$")
    assert "s3cret-pass" not in user.password_hash
    assert event.action == "user.created" and event.actor == "system:cli"
    assert "s3cret-pass" not in repr(event.after)


@pytest.mark.parametrize(
    ("username", "password", "role", "code"),
    [
        ("", "long-enough", "staff", "invalid_username"),
        ("bob", "short", "staff", "weak_password"),
        ("bob", "long-enough", "superuser", "invalid_role"),
    ],
)
def test_bad_user_input_is_refused(
    database: Database, username: str, password: str, role: str, code: str
) -> None:
    with pytest.raises(accounts.AccountError) as info:
        accounts.create_user(db=database, actor=CLI, username=username, password=password, role=role)
    assert info.value.code == code


def test_login_session_and_lockout(database: Database) -> None:
    accounts.create_user(db=database, actor=CLI, username="maria", password="s3cret-pass", role="admin")
    token, user = _login(database, "s3cret-pass")
    assert accounts.user_for_token(db=database, token=token).id == user.id
    assert accounts.user_for_token(db=database, token=token + "x") is None
    accounts.logout(db=database, token=token)
    assert accounts.user_for_token(db=database, token=token) is None

    for _ in range(3):
        with pytest.raises(accounts.AccountError, match="wrong username or password"):
            _login(database, "wrong-password")
    # locked now: even the right password is refused until the lockout ends
    with pytest.raises(accounts.AccountError) as info:
        _login(database, "s3cret-pass")
    assert info.value.code == "account_locked"


def test_unknown_user_gets_the_same_error(database: Database) -> None:
    with pytest.raises(accounts.AccountError) as info:
        _login(database, "whatever-pass")
    assert info.value.code == "invalid_credentials"


def test_api_key_stored_hashed_and_revocable(database: Database) -> None:
    issued = accounts.create_api_key(db=database, actor=CLI, name="door-east", scopes=["recognize"])
    assert issued.key.startswith(accounts.API_KEY_PREFIX)
    with database.session() as session:
        stored = session.scalar(select(ApiKey))
    assert issued.key not in (stored.key_hash, stored.prefix)
    assert accounts.find_api_key(db=database, plaintext=issued.key).name == "door-east"
    assert accounts.find_api_key(db=database, plaintext=issued.key[:-1] + "?") is None
    accounts.revoke_api_key(db=database, actor=CLI, key_id=issued.id)
    assert accounts.find_api_key(db=database, plaintext=issued.key) is None


def test_api_key_scopes_are_checked(database: Database) -> None:
    with pytest.raises(accounts.AccountError) as info:
        accounts.create_api_key(db=database, actor=CLI, name="x", scopes=["recognize", "root"])
    assert info.value.code == "invalid_scopes" and "root" in info.value.message
