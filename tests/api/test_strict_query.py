"""Unknown query parameters are refused across the API (422 invalid_input), naming the parameter."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_an_unknown_query_parameter_is_refused_and_named(client: TestClient, auth) -> None:  # noqa: ANN001
    admin = auth("admin")
    response = client.get("/children", params={"foo": "1", "limit": "5"}, headers=admin)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"].startswith("query.foo: unknown query parameter (this endpoint takes ")
    assert "limit" in error["message"] and "offset" in error["message"]
    assert error["details"][0]["loc"] == ["query", "foo"]
    # every unknown one is named; the known ones still work
    two = client.get("/audit?zz=1&aa=2", headers=admin).json()["error"]["message"]
    assert two.startswith("query.aa: unknown") and "query.zz: unknown" in two
    assert client.get("/children", params={"limit": "5"}, headers=admin).status_code == 200


def test_every_kind_of_route_refuses_them(client: TestClient, auth) -> None:  # noqa: ANN001
    admin = auth("admin")
    cases = [
        ("get", "/healthz"),
        ("get", "/admin/settings"),
        ("get", "/review/queue"),
        ("get", "/imports"),
        ("post", "/children"),
        ("get", "/children/1"),
    ]
    for method, path in cases:
        response = client.request(method, path, params={"sort_by": "x"}, headers=admin, json={})
        assert response.status_code == 422, (path, response.text)
        assert "query.sort_by: unknown query parameter" in response.json()["error"]["message"], path
    none = client.get("/healthz?x=1").json()["error"]["message"]
    assert none == "query.x: unknown query parameter (this endpoint takes none)"


def test_the_declared_parameters_are_what_each_route_takes(client: TestClient, auth) -> None:  # noqa: ANN001
    admin = auth("admin")
    accepted = client.get("/review/duplicates", params={"threshold": 0.9, "limit": 5}, headers=admin)
    assert accepted.status_code == 200, accepted.text
    refused = client.get("/review/duplicates", params={"treshold": 0.9}, headers=admin).json()["error"]
    assert refused["message"] == (
        "query.treshold: unknown query parameter (this endpoint takes limit, threshold)"
    )
    calibration = client.get("/admin/calibration?target_far=0.01&far=1", headers=admin).json()["error"]
    assert calibration["message"].endswith("(this endpoint takes target_far)")
