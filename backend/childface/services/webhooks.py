"""Webhooks: video events for other systems, through an outbox, signed, retried with backoff.

Outbox: `enqueue` adds one `webhook_deliveries` row per configured URL inside
the caller's transaction, so an event is announced exactly when what it
announces commits (a rolled-back arrival sends nothing; a committed one is
never lost to a crash).

Delivery (`deliver_due`, run by `WebhookWorker`, a thread in the API process
and in `childface watch`): claim due rows in one short transaction (each
claim counts an attempt and leases the row for a while, so a delivering
process that dies hands the row back; PostgreSQL's SKIP LOCKED lets several
processes share the work), POST outside any transaction, then record the
outcome: 2xx delivered; otherwise retried after `webhook_backoff_s` doubled
per attempt, capped at `webhook_backoff_max_s`, with jitter (a random 50-100 %
of the delay, so receivers coming back are not hit by every sender at once),
until `webhook_max_attempts`, then failed. Delivery is at least once: a
receiver drops repeats by the payload's `event_id` (the same for every URL).

Request: `POST url`, body the JSON payload (UTF-8, keys sorted), headers
`X-Childface-Event`, `X-Childface-Delivery` (the row id),
`X-Childface-Timestamp` (Unix seconds) and `X-Childface-Signature:
sha256=<hex>`, the HMAC-SHA256 with key `webhook_secret` over
`<timestamp>.<body>` (`sign`; receivers check it with `verify_signature`, and
refuse old timestamps so a recorded request cannot be replayed later).

A pending row whose URL is no longer in `webhook_urls` is marked failed ("url
removed") when it comes due, never sent.

Delivered and failed rows are deleted after `webhook_keep_days`; rows about a
child go with the child (erasure: a foreign key with ON DELETE CASCADE), and a
`review` event tied to another child loses the erased child from its candidates
(`forget_candidates`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import Text, cast, delete, or_, select, update
from sqlalchemy.orm import Session

from childface.config import Settings
from childface.db.models import WebhookDelivery
from childface.db.session import Database

log = logging.getLogger(__name__)

EVENTS = ("arrival", "sighting", "unknown_person", "review")
EVENT_HEADER = "X-Childface-Event"
DELIVERY_HEADER = "X-Childface-Delivery"
TIMESTAMP_HEADER = "X-Childface-Timestamp"
SIGNATURE_HEADER = "X-Childface-Signature"
#: a receiver refuses a signature whose timestamp is further than this from its clock
SIGNATURE_TOLERANCE_S = 300

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
#: POSTs per pass at most (then the worker sleeps and starts again)
_PASS_LIMIT = 200
#: a claimed row is someone else's to retry after this long past the POST's timeout
_LEASE_EXTRA_S = 30.0
_ERROR_CHARS = 500
#: last_error of a pending row failed because its URL is no longer configured
URL_REMOVED = "url removed"


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """`sha256=<hex>`: HMAC-SHA256 of `<timestamp>.<body>`."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    digest = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str | bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent."""
    try:
        sent = float(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def enqueue(
    session: Session,
    settings: Settings,
    event: str,
    data: dict[str, Any],
    *,
    child_id: int | None = None,
    at: datetime | None = None,
) -> dict[str, Any] | None:
    """Add `event` for every configured URL inside the caller's transaction; the payload, or None
    when no webhook is configured (nothing is stored then)."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    if not settings.webhook_urls:
        return None
    payload = {
        "event": event,
        "event_id": uuid.uuid4().hex,
        "occurred_at": (at or datetime.now(UTC)).isoformat(),
        **data,
    }
    session.add_all(
        WebhookDelivery(event=event, url=url, payload=payload, child_id=child_id, status=PENDING)
        for url in settings.webhook_urls
    )
    return payload


def forget_candidates(session: Session, child_ids: list[int]) -> int:
    """Erasure's part (inside its transaction): drop these children from the candidate lists of the
    `review` events kept (pending, delivered or failed) that are tied to another child; returns how
    many rows changed. Rows tied to these children go with them (ON DELETE CASCADE)."""
    erased = set(child_ids)
    if not erased:
        return 0
    # a superset in SQL (the id's digits in the JSON text), decided exactly below
    mentions = or_(*(cast(WebhookDelivery.payload, Text).contains(str(c)) for c in erased))
    rows = session.scalars(
        select(WebhookDelivery).where(
            WebhookDelivery.event == "review",
            or_(WebhookDelivery.child_id.is_(None), WebhookDelivery.child_id.not_in(child_ids)),
            mentions,
        )
    )
    changed = 0
    for row in rows:
        candidates = row.payload.get("candidates") or []
        kept = [c for c in candidates if c.get("child_id") not in erased]
        if len(kept) != len(candidates):
            row.payload = {**row.payload, "candidates": kept}  # a new dict: JSON columns track assignment
            changed += 1
    return changed


def backoff_delay(attempts: int, settings: Settings, rng: random.Random | None = None) -> float:
    """Seconds before the next try after `attempts` failed ones: doubling, capped, 50-100 % jitter."""
    base = min(settings.webhook_backoff_max_s, settings.webhook_backoff_s * 2 ** max(0, attempts - 1))
    return base * (0.5 + 0.5 * (rng or random).random())


@dataclass(frozen=True)
class _Claim:
    id: int
    event: str
    url: str
    payload: dict[str, Any]
    attempts: int


def _claim(db: Database, settings: Settings) -> _Claim | None:
    """The next due row, its attempt counted and leased (one at a time: a lease covers one POST)."""
    now = datetime.now(UTC)
    due = (WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now)
    with db.session() as session:  # the usual answer is "nothing due": no write lock for it
        if session.scalar(select(WebhookDelivery.id).where(*due).limit(1)) is None:
            return None
    with db.transaction() as session:
        # an admin removed the URL: its pending events go nowhere (and never to a URL no longer trusted)
        session.execute(
            update(WebhookDelivery)
            .where(*due, WebhookDelivery.url.not_in(list(settings.webhook_urls)))
            .values(status=FAILED, last_error=URL_REMOVED)
        )
        query = (
            select(WebhookDelivery)
            .where(*due)
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(1)
        )
        if not db.is_sqlite:  # SQLite: BEGIN IMMEDIATE serialises claims already
            query = query.with_for_update(skip_locked=True)
        row = session.scalar(query)
        if row is None:
            return None
        row.attempts += 1
        row.next_attempt_at = now + timedelta(seconds=settings.webhook_timeout_s + _LEASE_EXTRA_S)
        return _Claim(row.id, row.event, row.url, dict(row.payload), row.attempts)


def _post(client: httpx.Client, secret: str, claim: _Claim) -> str | None:
    """POST one event; None when delivered, else why not."""
    body = body_bytes(claim.payload)
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        EVENT_HEADER: claim.event,
        DELIVERY_HEADER: str(claim.id),
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(secret, timestamp, body),
    }
    try:
        response = client.post(claim.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}: {response.text[:200]}"[:_ERROR_CHARS]


def _record(db: Database, settings: Settings, claim: _Claim, error: str | None, rng: random.Random) -> None:
    now = datetime.now(UTC)
    with db.transaction() as session:
        row = session.get(WebhookDelivery, claim.id)
        if row is None:  # deleted meanwhile (its child was erased)
            return
        if error is None:
            row.status, row.delivered_at, row.last_error = DELIVERED, now, None
            return
        row.last_error = error
        if claim.attempts >= settings.webhook_max_attempts:
            row.status = FAILED
            log.warning("webhook %s to %s failed after %d attempts: %s", claim.event, claim.url,
                        claim.attempts, error)
        else:
            row.next_attempt_at = now + timedelta(seconds=backoff_delay(claim.attempts, settings, rng))


def deliver_due(
    db: Database, settings: Settings, *, client: httpx.Client | None = None, rng: random.Random | None = None
) -> int:
    """One pass: deliver (or retry) every due event; returns how many POSTs were made."""
    if settings.webhook_secret is None:
        return 0
    secret = settings.webhook_secret.get_secret_value()
    rng = rng or random.Random()
    owned = client is None
    client = client or httpx.Client(timeout=settings.webhook_timeout_s, follow_redirects=False)
    sent = 0
    try:
        while sent < _PASS_LIMIT and (claim := _claim(db, settings)) is not None:
            _record(db, settings, claim, _post(client, secret, claim), rng)
            sent += 1
    finally:
        if owned:
            client.close()
    return sent


def purge_old(db: Database, settings: Settings) -> int:
    """Delete delivered and failed rows older than `webhook_keep_days`; returns how many."""
    cutoff = datetime.now(UTC) - timedelta(days=settings.webhook_keep_days)
    with db.transaction() as session:
        result = session.execute(
            delete(WebhookDelivery).where(
                WebhookDelivery.status.in_((DELIVERED, FAILED)), WebhookDelivery.created_at < cutoff
            )
        )
        return int(result.rowcount or 0)


class WebhookWorker:
    """A daemon thread that delivers due events every `poll_s` seconds (and purges old ones hourly)."""

    def __init__(self, db: Database, settings: Settings, *, poll_s: float = 1.0) -> None:
        self.db, self.settings, self.poll_s = db, settings, poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> WebhookWorker:
        if self._thread is None and self.settings.webhook_urls:
            self._thread = threading.Thread(target=self._run, name="childface-webhooks", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        last_purge = 0.0
        with httpx.Client(timeout=self.settings.webhook_timeout_s, follow_redirects=False) as client:
            while not self._stop.is_set():
                try:
                    deliver_due(self.db, self.settings, client=client)
                    if time.monotonic() - last_purge > 3600:
                        purge_old(self.db, self.settings)
                        last_purge = time.monotonic()
                except Exception:  # noqa: BLE001 - the database may be away for a while: try again later
                    log.warning("webhook delivery pass failed; retrying", exc_info=True)
                self._stop.wait(self.poll_s)
