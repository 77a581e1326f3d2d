"""Probes, request ids, the error shape and the body-size limit."""

from __future__ import annotations

from importlib import metadata

from fastapi.testclient import TestClient

from childface.api.app import create_app


def test_healthz_and_readyz(client: TestClient, runtime) -> None:  # noqa: ANN001
    assert client.get("/healthz").json() == {"status": "ok"}
    runtime.integrity.wait(30)  # the start-up integrity check runs in the background ("checking")
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {
        "service": "childface",  # a readiness check tells childface from another program on the port
        "version": metadata.version("childface"),
        "ready": True,
        "checks": {"database": "ok", "models": "ok", "index": "ok", "integrity": "ok"},
        "warnings": [],
    }


def test_request_id_is_echoed_or_made(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"}).headers["X-Request-ID"]
    assert made != "bad id with spaces" and len(made) == 32


def test_oversized_body_is_413_json(runtime, auth) -> None:  # noqa: ANN001
    settings = runtime.settings.model_copy(update={"max_upload_bytes": 64 * 1024})
    app = create_app(settings, runtime)
    headers = auth("staff")
    with TestClient(app) as client:
        big = b"\xff\xd8\xff" + b"\0" * (100 * 1024)
        response = client.post("/recognize", files={"file": ("big.jpg", big, "image/jpeg")}, headers=headers)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            for _ in range(20):
                yield b"x" * 8192

        streamed = client.post(
            "/children", content=chunks(), headers={**headers, "Content-Type": "application/json"}
        )
        assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "payload_too_large"
