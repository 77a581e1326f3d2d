"""Rate limit, per client address, for requests that carry no valid credentials.

Counted: every request to a route that answers without credentials (sign-in,
the API docs; the health probes are exempt) and every request whose
credentials are missing or invalid. Over the limit (setting
`rate_limit_unauthenticated`, e.g. "30/minute", a moving window) the answer is
429 `rate_limited` with `Retry-After`. A request with valid credentials is
never counted nor refused here.

The client address is the one the ASGI server reports. Behind a reverse proxy
that is the proxy's address unless uvicorn is told to trust its
`X-Forwarded-For` (`--proxy-headers --forwarded-allow-ips <proxy address>`).
Counters live in this process's memory (the `limits` library): each API
replica limits on its own.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from childface.services.errors import DomainError


class RateLimited(DomainError):
    """Too many requests without valid credentials from one address; `retry_after_s` for Retry-After."""

    code = "rate_limited"
    status = 429

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many requests from this address; try again in {retry_after_s} seconds")
        self.retry_after_s = retry_after_s


class AddressRateLimit:
    """A moving-window request budget per client address (thread-safe: the storage locks)."""

    def __init__(self, rate: str) -> None:
        self._item = parse(rate)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())

    def hit(self, address: str) -> None:
        """Count one request from `address`; raise RateLimited (nothing counted) when over the budget."""
        if self._limiter.hit(self._item, address):
            return
        reset_at, _remaining = self._limiter.get_window_stats(self._item, address)
        raise RateLimited(max(1, math.ceil(reset_at - time.time())))


def client_address(scope: Mapping[str, Any]) -> str:
    """The client's address from an ASGI scope (or a Request, which is one): host only, no port."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
