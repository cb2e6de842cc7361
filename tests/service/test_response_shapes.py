"""Every response shape is published in the OpenAPI schema and real responses validate against it: stream,
stateless and batch requests, JSON and binary bodies, the default rows and the columnar shape (equal content)."""

from __future__ import annotations

from typing import Any

import jsonschema
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.codec import BINARY_CONTENT_TYPE, encode_binary, encode_binary_batch
from tests.service.conftest import points_body


@pytest.fixture
def spec(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def validate(spec: dict[str, Any], path: str, body: Any) -> None:
    schema = spec["paths"][path]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.validate(body, {**schema, "components": spec["components"]})


def rows_from_columns(body: dict[str, Any]) -> list[dict[str, Any]]:
    cols, names = body["scores"], body["sensors"]
    return [
        {
            "ts": ts,
            "score": score,
            "level": level,
            "contributions": [{"sensor": names[i], "share": v} for i, v in zip(idx, shares, strict=True)],
        }
        for ts, score, level, idx, shares in zip(
            cols["ts"], cols["score"], cols["level"], cols["top_sensors"], cols["top_shares"], strict=True
        )
    ]


def same_points(rows: list[dict[str, Any]], columns: list[dict[str, Any]]) -> None:
    assert [(r["ts"], r["level"]) for r in rows] == [(c["ts"], c["level"]) for c in columns]
    np.testing.assert_allclose([r["score"] for r in rows], [c["score"] for c in columns], rtol=1e-6)
    for r, c in zip(rows, columns, strict=True):
        assert [x["sensor"] for x in r["contributions"]] == [x["sensor"] for x in c["contributions"]]


def test_stream_responses_in_both_shapes_validate_and_agree(
    client: TestClient, spec: dict[str, Any], test_series: np.ndarray
) -> None:
    series = test_series[:230].copy()
    series[200:, 3] += 5.0  # something to alert on
    rows = client.post("/score", json=points_body("shape-rows", series, 0)).json()
    columns = client.post("/score?format=columns", json=points_body("shape-cols", series, 0)).json()
    for body in (rows, columns):
        validate(spec, "/score", body)
    assert columns["sensors"] == client.get("/models/tvnet").json()["feature_names"]
    assert len(rows["scores"]) == 230  # windows end at 99, 109, …, 229
    same_points(rows["scores"], rows_from_columns(columns))
    binary = client.post(
        "/score?format=columns",
        content=encode_binary("shape-bin", np.arange(230.0), series),
        headers={"content-type": BINARY_CONTENT_TYPE},
    ).json()
    validate(spec, "/score", binary)
    same_points(rows["scores"], rows_from_columns(binary))


def test_stateless_and_batch_responses_in_both_shapes_validate(
    client: TestClient, spec: dict[str, Any], test_series: np.ndarray
) -> None:
    window = {"window": test_series[:100].tolist()}
    rows = client.post("/score", json=window).json()
    columns = client.post("/score?format=columns", json=window).json()
    for body in (rows, columns):
        validate(spec, "/score", body)
    same_points(rows["scores"], rows_from_columns(columns))

    items = {
        "items": [
            points_body("batch-a", test_series[:120], 0),
            {"stream_id": "batch-b", "points": [{"ts": 0.0, "values": [1.0]}]},  # fails alone
        ]
    }
    for fmt in ("rows", "columns"):
        body = client.post(f"/score/batch?format={fmt}", json=items).json()
        validate(spec, "/score/batch", body)
        assert body["items"][1]["error"]["status"] == 422
    frames = [encode_binary("batch-c", np.arange(120.0), test_series[:120]), b"VGL1"]
    binary = client.post(
        "/score/batch?format=columns",
        content=encode_binary_batch(frames),
        headers={"content-type": BINARY_CONTENT_TYPE},
    ).json()
    validate(spec, "/score/batch", binary)
    assert binary["items"][1]["error"]["status"] == 422
    batch_body = spec["paths"]["/score/batch"]["post"]["requestBody"]["content"]
    assert BINARY_CONTENT_TYPE in batch_body and "VGLB" in batch_body[BINARY_CONTENT_TYPE]["description"]
    assert client.post("/score?format=xml", json=window).status_code == 422
    for path in ("/score", "/score/batch"):
        (parameter,) = spec["paths"][path]["post"]["parameters"]
        assert parameter["name"] == "format" and parameter["in"] == "query"
        assert parameter["schema"]["enum"] == ["rows", "columns"]


def test_error_responses_validate_against_the_published_error_body(
    client: TestClient, spec: dict[str, Any], test_series: np.ndarray
) -> None:
    """Every documented 4xx/5xx is the body Vigil sends ({code, detail}), including the 422 of a bad path or
    query parameter (FastAPI documents a list-shaped ``detail`` there by default)."""
    cases = [
        ("get", "/streams/{stream_id}", "422", client.get("/streams/%20")),
        ("get", "/alerts", "422", client.get("/alerts", params={"since": "12"})),
        (
            "post",
            "/score",
            "404",
            client.post("/score", json={**points_body("e", test_series[:2], 0), "model": "nope"}),
        ),
        ("post", "/score", "422", client.post("/score", json={"stream_id": "e", "points": []})),
    ]
    for method, path, status, response in cases:
        assert str(response.status_code) == status, (path, response.text)
        documented = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
        jsonschema.validate(response.json(), {**documented, "components": spec["components"]})
    assert "HTTPValidationError" not in spec["components"]["schemas"]
