"""Every route except health and metrics needs a key, and the key's roles decide what it may do."""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from service.settings import Settings
from tests.service.conftest import auth

OPEN = {"/healthz", "/readyz", "/metrics", "/ui", "/ui/static/app.js"}  # the live view's shell holds no data
ROLE_OF = {
    ("POST", "/score"): "score",
    ("POST", "/score/batch"): "score",
    ("DELETE", "/streams/{stream_id}"): "score",
    ("GET", "/streams/{stream_id}"): "read",
    ("GET", "/streams"): "read",
    ("GET", "/streams/{stream_id}/scores"): "read",
    ("GET", "/streams/{stream_id}/window"): "read",
    ("GET", "/models"): "read",
    ("GET", "/models/{name}"): "read",
    ("GET", "/alerts"): "read",
    ("POST", "/admin/models/reload"): "admin",
}
KEY_OF_ROLE = {"score": "scorer", "read": "reader", "admin": "admin"}


def concrete(path: str) -> str:
    return path.replace("{stream_id}", "s-1").replace("{name}", "tvnet")


def app_routes(client: TestClient) -> list[tuple[str, str]]:
    routes = []
    for route in client.app.routes:
        if isinstance(route, APIRoute) and not route.path.startswith(("/docs", "/openapi", "/redoc")):
            routes.extend((method, route.path) for method in route.methods if method != "HEAD")
    return routes


def test_every_route_is_classified(client: TestClient) -> None:
    """A new route must be added here with its role, or to OPEN: none slips in unprotected."""
    for method, path in app_routes(client):
        assert path in OPEN or (method, path) in ROLE_OF, f"unclassified route {method} {path}"


@pytest.mark.parametrize(("method", "path"), sorted(ROLE_OF))
def test_routes_refuse_a_missing_or_wrong_key_with_401(client: TestClient, method: str, path: str) -> None:
    for headers in (
        {"Authorization": ""},
        {"Authorization": "Bearer not-a-key-0123456789"},
        {"Authorization": "Basic x"},
    ):
        response = client.request(method, concrete(path), headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), sorted(ROLE_OF))
def test_routes_refuse_keys_without_the_role_with_403(client: TestClient, method: str, path: str) -> None:
    needed = ROLE_OF[(method, path)]
    for role, key in KEY_OF_ROLE.items():
        response = client.request(method, concrete(path), headers=auth(key))
        if role == needed:
            assert response.status_code not in (401, 403), (method, path, key)
        else:
            assert response.status_code == 403, (method, path, key, response.text)
            assert needed in response.json()["detail"]


def test_every_keyed_route_declares_the_bearer_scheme_in_openapi(client: TestClient) -> None:
    """The scoring routes check their key without FastAPI's dependencies (``service.deps.scoring_call``): their
    OpenAPI entries must still say so, like every other keyed route's."""
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for method, path in ROLE_OF:
        assert {"HTTPBearer": []} in spec["paths"][path][method.lower()]["security"], (method, path)


def test_the_key_is_checked_before_the_format_and_the_body(client: TestClient) -> None:
    for path in ("/score", "/score/batch"):
        missing = client.post(f"{path}?format=xml", content=b"{not json", headers={"Authorization": ""})
        assert missing.status_code == 401, path
        reader = client.post(f"{path}?format=xml", content=b"{not json", headers=auth("reader"))
        assert reader.status_code == 403, path
        scorer = client.post(f"{path}?format=xml", content=b"{not json", headers=auth("scorer"))
        assert scorer.status_code == 422, path
        assert scorer.json()["detail"] == "query.format: must be one of 'rows', 'columns', not 'xml'"


def test_health_and_metrics_stay_open(client: TestClient) -> None:
    for path in OPEN:
        assert client.get(path, headers={"Authorization": ""}).status_code == 200


def test_websocket_rejects_missing_and_wrong_tokens_with_a_policy_close(client: TestClient) -> None:
    for query in ("", "?token=wrong-token-0123456789", f"?token={'k-scorer-0123456789abcdef'}"):
        no_header = {"Authorization": ""}  # the client's default header would otherwise authenticate
        with (
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect("/ws/alerts" + query, headers=no_header) as ws,
        ):
            ws.receive_json()
        assert closed.value.code == 1008


def test_settings_refuse_placeholder_and_short_keys_and_a_missing_key_list(settings: Settings) -> None:
    base = settings.model_dump()
    for key in ("changeme-changeme-123", "short"):
        with pytest.raises(ValidationError):
            Settings(**{**base, "api_keys": [{"name": "x", "key": key, "roles": ["read"]}]})
    with pytest.raises(ValidationError, match="VIGIL_API_KEYS"):
        Settings(**{**base, "api_keys": []})
