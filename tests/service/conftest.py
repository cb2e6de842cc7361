from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import SAMPLE
from training.data import load_series

KEYS = {
    "all": ("k-all-0123456789abcdef", ["score", "read", "admin"]),
    "scorer": ("k-scorer-0123456789abcdef", ["score"]),
    "reader": ("k-reader-0123456789abcdef", ["read"]),
    "admin": ("k-admin-0123456789abcdef", ["admin"]),
}


def auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


def make_settings(models_dir: Path, redis_url: str, **overrides: object) -> Settings:
    keys = [{"name": n, "key": k, "roles": r} for n, (k, r) in KEYS.items()]
    values: dict[str, object] = {
        "models_dir": models_dir,
        "redis_url": redis_url,
        "provider": "cpu",
        "intra_op_threads": 1,
        "api_keys": keys,
        # In-process apps of the tests are many and each is a reference cycle: frozen, none would ever be
        # collected (test_gcpolicy.py turns the freeze on for its own app and undoes it).
        "gc_freeze": False,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def settings(models_dir: Path, redis_url: str, clean_redis: redis.Redis) -> Settings:
    return make_settings(models_dir, redis_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), headers=auth("all")) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def test_series() -> np.ndarray:
    """The first 600 rows of the sample's test part (raw values)."""
    return load_series(SAMPLE / "test.txt.gz", max_rows=600)


def points_body(stream_id: str, rows: np.ndarray, start: int) -> dict:
    return {
        "stream_id": stream_id,
        "points": [{"ts": float(start + i), "values": r.tolist()} for i, r in enumerate(rows)],
    }


def stream(client: TestClient, stream_id: str, series: np.ndarray, chunk: int, start: int = 0) -> list[dict]:
    """POST the rows of ``series`` in chunks (ts = start + row index); returns every response body."""
    bodies = []
    for offset in range(0, len(series), chunk):
        response = client.post(
            "/score", json=points_body(stream_id, series[offset : offset + chunk], start + offset)
        )
        assert response.status_code == 200, response.text
        bodies.append(response.json())
    return bodies


def scores_by_ts(bodies: list[dict]) -> dict[float, float]:
    out: dict[float, float] = {}
    for body in bodies:
        for item in body["scores"]:
            assert item["ts"] not in out, f"point {item['ts']} scored twice"
            out[item["ts"]] = item["score"]
    return out
