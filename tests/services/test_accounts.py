"""Staff accounts, sign-in and its throttle, API keys — on both back ends."""

from __future__ import annotations

import sqlite3
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from argon2 import PasswordHasher
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from childface.db import Actor, Database
from childface.db.models import ApiKey, AuditEvent, LoginThrottle, User
from childface.services import accounts, login_throttle
from childface.services.login_throttle import ThrottlePolicy

CLI = Actor("system", "cli")


POLICY = ThrottlePolicy(
    max_failures_per_address=20, max_failures_per_account_address=3, window=timedelta(minutes=15)
)


@pytest.fixture(autouse=True)
def cheap_argon2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real argon2id at the cheapest cost: the default (~0.2 s per hash on two cores) would make up most
    of these tests' time (the test of 40 parallel attempts alone: 40 of them). What they check is the
    counting, not the cost; the tests that time the hash set their own."""
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


def _login(
    database: Database,
    password: str,
    *,
    username: str = "maria",
    address: str = "10.0.0.1",
    policy: ThrottlePolicy = POLICY,
) -> tuple[str, User]:
    return accounts.login(
        db=database,
        username=username,
        password=password,
        ttl=timedelta(hours=1),
        client_address=address,
        policy=policy,
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


def test_login_session_and_throttle(database: Database) -> None:
    accounts.create_user(db=database, actor=CLI, username="maria", password="s3cret-pass", role="admin")
    token, user = _login(database, "s3cret-pass")
    assert accounts.user_for_token(db=database, token=token).id == user.id
    assert accounts.user_for_token(db=database, token=token + "x") is None
    accounts.logout(db=database, token=token)
    assert accounts.user_for_token(db=database, token=token) is None

    for _ in range(3):
        with pytest.raises(accounts.AccountError, match="wrong username or password"):
            _login(database, "wrong-password")
    # that address must wait now, even with the right password; the answer names no account
    with pytest.raises(accounts.TooManyAttempts) as info:
        _login(database, "s3cret-pass")
    assert info.value.code == "too_many_attempts" and 890 <= info.value.retry_after_s <= 900
    assert "maria" not in info.value.message and "lock" not in info.value.message
    # maria signs in from her own desk: a stranger's failures cannot lock her out
    _login(database, "s3cret-pass", address="10.0.0.2")


def test_a_success_resets_the_address_and_account_counter(database: Database) -> None:
    accounts.create_user(db=database, actor=CLI, username="maria", password="s3cret-pass", role="staff")
    for _ in range(2):
        for _ in range(2):
            with pytest.raises(accounts.AccountError):
                _login(database, "wrong-password")
        _login(database, "s3cret-pass")  # four failures in all, never three in a row: never throttled
    with database.session() as session:
        assert session.scalar(select(User.failed_logins)) == 0


def test_known_and_unknown_names_answer_alike(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same error, same throttle, same work: nothing tells whether a name exists."""
    # a hash clearly dearer than a round trip to a loaded PostgreSQL, so the ratios below measure hashing
    monkeypatch.setattr(accounts, "_hasher", PasswordHasher(time_cost=3, memory_cost=65536, parallelism=1))
    accounts.create_user(db=database, actor=CLI, username="maria", password="s3cret-pass", role="staff")
    seconds: dict[str, list[float]] = {"maria": [], "ghost": []}
    answers: dict[str, list[tuple[str, str]]] = {"maria": [], "ghost": []}
    for _ in range(4):
        for name, address in (("maria", "10.1.0.1"), ("ghost", "10.2.0.1")):
            started = time.perf_counter()
            with pytest.raises(accounts.AccountError) as info:
                _login(database, "wrong-password", username=name, address=address)
            seconds[name].append(time.perf_counter() - started)
            message = info.value.message.replace(str(getattr(info.value, "retry_after_s", "")), "N")
            answers[name].append((info.value.code, message))
    assert answers["maria"] == answers["ghost"]
    assert [code for code, _ in answers["maria"]] == ["invalid_credentials"] * 3 + ["too_many_attempts"]
    # the checked attempts cost one argon2 verify each, whether the name exists or not
    known, unknown = statistics.median(seconds["maria"][:3]), statistics.median(seconds["ghost"][:3])
    assert abs(known - unknown) < 0.5 * max(known, unknown), (seconds["maria"], seconds["ghost"])
    # the refused attempt checks no password at all
    assert seconds["maria"][3] < 0.5 * known and seconds["ghost"][3] < 0.5 * unknown


def test_address_limit_covers_every_name(database: Database) -> None:
    accounts.create_user(db=database, actor=CLI, username="maria", password="s3cret-pass", role="staff")
    policy = ThrottlePolicy(
        max_failures_per_address=4, max_failures_per_account_address=3, window=timedelta(minutes=15)
    )
    for n in range(4):
        with pytest.raises(accounts.AccountError, match="wrong username or password"):
            _login(database, "guess", username=f"name{n}", policy=policy)
    with pytest.raises(accounts.TooManyAttempts):
        _login(database, "s3cret-pass", policy=policy)
    _login(database, "s3cret-pass", address="10.0.0.9", policy=policy)


def test_the_window_ends(database: Database) -> None:
    accounts.create_user(db=database, actor=CLI, username="maria", password="s3cret-pass", role="staff")
    policy = ThrottlePolicy(
        max_failures_per_address=20, max_failures_per_account_address=2, window=timedelta(seconds=1)
    )
    for _ in range(2):
        with pytest.raises(accounts.AccountError, match="wrong username"):
            _login(database, "guess", policy=policy)
    with pytest.raises(accounts.TooManyAttempts) as info:
        _login(database, "s3cret-pass", policy=policy)
    assert info.value.retry_after_s == 1
    time.sleep(1.1)
    _login(database, "s3cret-pass", policy=policy)


def test_parallel_wrong_passwords_are_all_counted(database: Database) -> None:
    """40 wrong passwords at once for one account: every checked attempt is counted, none lost."""
    accounts.create_user(db=database, actor=CLI, username="maria", password="s3cret-pass", role="staff")
    roomy = ThrottlePolicy(
        max_failures_per_address=1000, max_failures_per_account_address=1000, window=timedelta(minutes=15)
    )

    def attempt(address: str, policy: ThrottlePolicy) -> str:
        try:
            _login(database, "wrong-password", address=address, policy=policy)
        except accounts.AccountError as exc:
            return exc.code
        return "signed_in"

    with ThreadPoolExecutor(max_workers=40) as pool:
        codes = list(pool.map(lambda _: attempt("10.0.0.1", roomy), range(40)))
    assert codes == ["invalid_credentials"] * 40
    keys = login_throttle.keys_for("10.0.0.1", "maria")
    with database.session() as session:
        assert session.scalar(select(User.failed_logins)) == 40
        counts = dict(session.execute(select(LoginThrottle.key, LoginThrottle.failures)).all())
    assert counts == {keys.address: 40, keys.account: 40}

    # with the default limit, from another address: a burst gets exactly `limit` checks, all counted;
    # the rest are refused before any password is checked (counted before the check, not after it)
    with ThreadPoolExecutor(max_workers=40) as pool:
        codes = list(pool.map(lambda _: attempt("10.0.0.2", POLICY), range(40)))
    checked = codes.count("invalid_credentials")
    assert checked == POLICY.max_failures_per_account_address
    assert checked + codes.count("too_many_attempts") == 40
    keys = login_throttle.keys_for("10.0.0.2", "maria")
    with database.session() as session:
        assert session.scalar(select(User.failed_logins)) == 40 + checked
        assert session.get(LoginThrottle, keys.account).failures == checked


class _WatchedHasher(PasswordHasher):
    """Real (cheap) argon2 that notes, at each hash or verify, whether a write transaction is open."""

    def __init__(self, db_url: str) -> None:
        super().__init__(time_cost=1, memory_cost=8, parallelism=1)
        self.db_url = db_url
        self.calls: list[tuple[str, bool]] = []

    def hash(self, password: str | bytes, *, salt: bytes | None = None) -> str:
        self.calls.append(("hash", _transaction_open(self.db_url)))
        return super().hash(password, salt=salt)

    def verify(self, hash: str | bytes, password: str | bytes) -> bool:  # noqa: A002 - the base's name
        self.calls.append(("verify", _transaction_open(self.db_url)))
        return super().verify(hash, password)


def _transaction_open(db_url: str) -> bool:
    """Whether another connection holds SQLite's write lock, or any PostgreSQL transaction is open."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        probe = sqlite3.connect(url.database, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            probe.close()
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return bool(
                conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
                    )
                )
            )
    finally:
        engine.dispose()


def test_no_password_hashing_inside_a_transaction(
    database: Database, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hashing takes ~0.2 s: inside a write transaction it would stall every other writer."""
    hasher = _WatchedHasher(db_url)
    monkeypatch.setattr(accounts, "_hasher", hasher)
    password = accounts.ensure_first_admin(db=database, actor=CLI)
    assert password is not None
    accounts.create_user(db=database, actor=CLI, username="maria", password="s3cret-pass", role="staff")
    _login(database, "s3cret-pass")
    with pytest.raises(accounts.AccountError):
        _login(database, "wrong-password")
    with pytest.raises(accounts.AccountError):
        _login(database, "wrong-password", username="ghost")
    accounts.change_password(
        db=database, actor=CLI, username="maria", current="s3cret-pass", new="n3w-secret"
    )
    _login(database, "n3w-secret", address="10.0.0.7")
    assert {kind for kind, _ in hasher.calls} == {"hash", "verify"} and len(hasher.calls) >= 8
    assert [call for call in hasher.calls if call[1]] == []


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
