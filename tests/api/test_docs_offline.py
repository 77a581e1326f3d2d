"""The API docs (/docs: Swagger UI, /redoc: ReDoc) work without internet: every asset is served here."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from childface.api.app import create_app
from childface.config import Settings

#: every address a docs page loads: attributes, and the Swagger UI's spec URL in its inline script
_REFERENCES = re.compile(r"""(?:href|src|spec-url)="([^"]+)"|\burl: '([^']+)'""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_assets(page: str) -> None:
    client = TestClient(create_app(Settings(_env_file=None)))  # no lifespan: the docs need no runtime
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    references = [a or b for a, b in _REFERENCES.findall(response.text)]
    assert len(references) >= (4 if page == "/docs" else 3), response.text
    assert "://" not in response.text.replace("window.location.origin", "")
    for url in references:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
