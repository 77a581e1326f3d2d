"""Webhooks against a real local HTTP server: signature, retries with backoff, failure, outbox (both DBs)."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from childface.config import Settings
from childface.db import Database
from childface.db.models import WebhookDelivery
from childface.services import webhooks

SECRET = "webhook-secret-for-tests"


class Receiver:
    """A threaded HTTP server that answers 503 to the first `failures` POSTs, then 204."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes, float]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append((dict(self.headers), body, time.monotonic()))
                failing = len(receiver.requests) <= receiver.failures
                self.send_response(503 if failing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def _settings(settings: Settings, *urls: str, **extra: object) -> Settings:
    return settings.model_copy(update={
        "webhook_urls": list(urls), "webhook_secret": SecretStr(SECRET), "webhook_backoff_s": 0.05,
        "webhook_backoff_max_s": 0.2, "webhook_timeout_s": 2.0, **extra,
    })


def _enqueue(database: Database, settings: Settings, event: str = "arrival") -> dict:
    with database.transaction() as session:
        payload = webhooks.enqueue(session, settings, event, {"source": "front-door", "child": {"id": 7}})
    assert payload is not None
    return payload


def _rows(database: Database) -> list[WebhookDelivery]:
    with database.session() as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def test_delivery_is_signed_and_the_signature_verifies(database: Database, settings: Settings,
                                                       receiver: Receiver) -> None:
    settings = _settings(settings, receiver.url)
    payload = _enqueue(database, settings)
    assert webhooks.deliver_due(database, settings) == 1
    ((headers, body, _),) = receiver.requests
    assert json.loads(body) == payload and payload["event"] == "arrival"
    timestamp, signature = headers["X-Childface-Timestamp"], headers["X-Childface-Signature"]
    assert headers["X-Childface-Event"] == "arrival" and signature.startswith("sha256=")
    assert webhooks.verify_signature(SECRET, timestamp, body, signature)
    # any change to the body, the timestamp or the key breaks it; an old timestamp is refused
    assert not webhooks.verify_signature(SECRET, timestamp, body.replace(b"7", b"8"), signature)
    assert not webhooks.verify_signature(SECRET, str(int(timestamp) + 1), body, signature)
    assert not webhooks.verify_signature("another key", timestamp, body, signature)
    assert not webhooks.verify_signature(SECRET, timestamp, body, signature, now=float(timestamp) + 600)
    (row,) = _rows(database)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 1, None)
    assert webhooks.deliver_due(database, settings) == 0  # nothing is sent twice


def test_failed_attempts_are_retried_with_backoff_until_delivered(database: Database, settings: Settings,
                                                                  receiver: Receiver) -> None:
    receiver.failures = 2
    settings = _settings(settings, receiver.url)
    _enqueue(database, settings)
    worker = webhooks.WebhookWorker(database, settings, poll_s=0.02).start()
    try:
        deadline = time.monotonic() + 10
        while _rows(database)[0].status == "pending" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
    (row,) = _rows(database)
    assert (row.status, row.attempts) == ("delivered", 3)
    times = [at for _, _, at in receiver.requests]
    assert len(times) == 3
    # waits of 50-100 % of 0.05 s, then of 0.1 s (doubling)
    assert times[1] - times[0] >= 0.025 and times[2] - times[1] >= 0.05
    event_ids = {json.loads(body)["event_id"] for _, body, _ in receiver.requests}
    assert len(event_ids) == 1  # the same event each time: receivers drop repeats by event_id


def test_an_unreachable_receiver_is_marked_failed_after_the_last_attempt(database: Database,
                                                                         settings: Settings,
                                                                         receiver: Receiver) -> None:
    receiver.failures = 100
    settings = _settings(settings, receiver.url, webhook_max_attempts=3, webhook_backoff_s=0.01)
    _enqueue(database, settings)
    deadline = time.monotonic() + 10
    while _rows(database)[0].status == "pending" and time.monotonic() < deadline:
        webhooks.deliver_due(database, settings)
        time.sleep(0.01)
    (row,) = _rows(database)
    assert (row.status, row.attempts, len(receiver.requests)) == ("failed", 3, 3)
    assert row.last_error.startswith("HTTP 503")


def test_one_row_per_url_and_nothing_without_urls(database: Database, settings: Settings,
                                                  receiver: Receiver) -> None:
    with database.transaction() as session:
        assert webhooks.enqueue(session, settings, "sighting", {}) is None  # no webhook configured
    assert _rows(database) == []
    settings = _settings(settings, receiver.url, receiver.url + "?copy=1")
    _enqueue(database, settings, "unknown_person")
    assert [r.url for r in _rows(database)] == [receiver.url, receiver.url + "?copy=1"]
    assert webhooks.deliver_due(database, settings) == 2 and len(receiver.requests) == 2
    # a rolled-back transaction announces nothing
    with pytest.raises(RuntimeError), database.transaction() as session:
        webhooks.enqueue(session, settings, "review", {})
        raise RuntimeError("the event's own write failed")
    assert len(_rows(database)) == 2
    with pytest.raises(ValueError), database.transaction() as session:
        webhooks.enqueue(session, settings, "not-an-event", {})


def test_pending_events_of_a_removed_url_are_failed_not_sent(database: Database, settings: Settings,
                                                             receiver: Receiver) -> None:
    gone = Receiver()  # a real server: a POST to it would be counted
    try:
        _enqueue(database, _settings(settings, receiver.url, gone.url))
        settings = _settings(settings, receiver.url)  # the admin removed the second URL
        assert webhooks.deliver_due(database, settings) == 1
        assert gone.requests == [] and len(receiver.requests) == 1
    finally:
        gone.close()
    rows = {r.url: r for r in _rows(database)}
    assert (rows[receiver.url].status, rows[receiver.url].attempts) == ("delivered", 1)
    assert (rows[gone.url].status, rows[gone.url].attempts) == ("failed", 0)
    assert rows[gone.url].last_error == "url removed"


def test_backoff_doubles_is_capped_and_jittered(settings: Settings) -> None:
    settings = settings.model_copy(update={"webhook_backoff_s": 5.0, "webhook_backoff_max_s": 60.0})
    rng = random.Random(1)
    delays = {n: [webhooks.backoff_delay(n, settings, rng) for _ in range(200)] for n in (1, 2, 3, 10)}
    for attempts, base in ((1, 5.0), (2, 10.0), (3, 20.0), (10, 60.0)):
        assert base * 0.5 <= min(delays[attempts]) and max(delays[attempts]) <= base
        assert max(delays[attempts]) - min(delays[attempts]) > base * 0.3  # really jittered


def test_settings_refuse_urls_without_a_secret() -> None:
    with pytest.raises(ValueError, match="webhook_secret"):
        Settings(_env_file=None, webhook_urls=["http://127.0.0.1:1/x"])
    with pytest.raises(ValueError, match="http"):
        Settings(_env_file=None, webhook_urls=["ftp://x"], webhook_secret="k")


def _readme_verifier() -> object:
    """The signature check the README gives receivers, run as written."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Webhooks", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, object] = {}
    exec(code, namespace)  # noqa: S102 - our own README's example
    return namespace["is_from_childface"]


def test_the_readme_example_verifies_a_real_delivery(database: Database, settings: Settings,
                                                     receiver: Receiver) -> None:
    settings = _settings(settings, receiver.url)
    _enqueue(database, settings, "sighting")
    webhooks.deliver_due(database, settings)
    ((headers, body, _),) = receiver.requests
    verify = _readme_verifier()
    assert verify(SECRET.encode(), headers, body)
    assert not verify(b"wrong", headers, body)
    assert not verify(SECRET.encode(), headers, body + b" ")
