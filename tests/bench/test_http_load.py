"""The HTTP load client runs in its own process against a real server and reports its figures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import pytest
from fastapi import FastAPI, File, Header, HTTPException, UploadFile

from childface.bench.api import serve_in_thread
from childface.bench.http_load import RESULT_KEYS, run_http_load


@pytest.fixture(scope="module")
def echo_server() -> Iterator[tuple[str, list[int]]]:
    """A server whose /recognize checks the key and records the size of each photo it received."""
    app = FastAPI()
    seen: list[int] = []

    @app.post("/recognize")
    def recognize(
        file: Annotated[UploadFile, File()], x_api_key: Annotated[str, Header()]
    ) -> dict[str, int]:
        if x_api_key != "secret":
            raise HTTPException(401, "bad key")
        size = len(file.file.read())
        seen.append(size)
        return {"bytes": size}

    with serve_in_thread(app) as url:
        yield url, seen


def test_load_from_a_separate_process(echo_server) -> None:  # noqa: ANN001
    url, seen = echo_server
    seen.clear()
    result = run_http_load(url, "secret", b"x" * 1234, requests=12, concurrency=3, warmup=2)
    assert set(RESULT_KEYS) <= set(result)
    assert result["requests"] == 12 and result["concurrency"] == 3
    assert len(result["latencies_ms"]) == 12 and result["status_counts"] == {"200": 12}
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"]
    assert result["throughput_rps"] > 0
    assert len(seen) == 12 + 3  # warm-up: at least one request per connection
    assert set(seen) == {1234}


def test_failed_requests_raise(echo_server) -> None:  # noqa: ANN001
    url, _ = echo_server
    with pytest.raises(RuntimeError, match="401"):
        run_http_load(url, "wrong", b"x", requests=2, concurrency=1, warmup=0)
