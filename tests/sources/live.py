"""A real ``vigil serve`` polling the backfilled SMD Prometheus on a shifted clock, and what tests read from it."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.poller import LEVELS
from tests.service.conftest import auth
from tests.service.live import LiveServer
from tests.sources.conftest import STEP_S, SMDFleet
from training.backtest import Backtest


def source_env(
    prometheus_url: str,
    fleet: SMDFleet,
    speed: float,
    at: float,
    poll_rows: int = 10,
    **extra: str,
) -> dict[str, str]:
    """Settings of a replica polling from the test range's first row: the clock reads the test range's start
    at wall time ``at`` and runs ``speed`` times as fast; a poll every ``poll_rows`` rows of that clock."""
    return {
        "VIGIL_SOURCES__PROMETHEUS_URL": prometheus_url,
        "VIGIL_SOURCES__START_AT": repr(fleet.test_start),
        "VIGIL_SOURCES__CLOCK": json.dumps({"origin": fleet.test_start, "at": at, "speed": speed}),
        "VIGIL_SOURCES__SETTLE_S": "0",  # the backfilled data never changes
        "VIGIL_SOURCES__POLL_INTERVAL_S": repr(poll_rows * STEP_S),
        "VIGIL_SOURCES__CATCH_UP_S": "86400",
        "VIGIL_SOURCES__EXPORT_SCORES": "true",
        "VIGIL_HISTORY_POINTS": "2000",
        **extra,
    }


def readiness(server: LiveServer) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{server.url}/readyz", timeout=5).json()
    return body


def source_status(server: LiveServer, model: str = "smd") -> dict[str, Any]:
    status: dict[str, Any] = readiness(server)["sources"][model]
    return status


def wait_for_cursor(server: LiveServer, ts: float, timeout_s: float = 120) -> None:
    """Until the replica's source cursor (the newest row fed) reaches ``ts``."""
    from models.source import parse_time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cursor = source_status(server)["cursor"]
        if cursor is not None and parse_time(cursor) >= ts:
            return
        time.sleep(0.25)
    raise AssertionError(f"the cursor did not reach {ts} in {timeout_s} s: {readiness(server)}")


def live_scores(server: LiveServer, stream: str, until: float) -> dict[float, float]:
    """A stream's scored points from its history (ts -> score), up to ``until``."""
    response = httpx.get(
        f"{server.url}/streams/{stream}/scores", params={"limit": 10_000}, headers=auth("reader"), timeout=10
    )
    assert response.status_code == 200, response.text
    return {p["ts"]: p["score"] for p in response.json()["scores"] if p["ts"] <= until}


def live_events(server: LiveServer, until: float) -> list[tuple[str, str, str, bool, float, float]]:
    response = httpx.get(
        f"{server.url}/alerts", params={"since": "0", "limit": 1000}, headers=auth("reader"), timeout=10
    )
    assert response.status_code == 200, response.text
    return sorted(
        (e["stream_id"], e["state"], e["severity"], e["escalated"], e["started_ts"], e["ts"])
        for e in response.json()["events"]
        if e["ts"] <= until
    )


def backtest_events(result: Backtest) -> list[tuple[str, str, str, bool, float, float]]:
    return sorted(
        (s.stream, e.state, e.severity, e.escalated, e.started_ts, e.ts)
        for s in result.streams
        for e in s.events
    )


def compare_scores(server: LiveServer, result: Backtest) -> dict[str, float]:
    """Every point the backtest scored has the same score live (float32 tolerance) and no other point was scored
    within its range; returns the figures."""
    worst, points = 0.0, 0
    for s in result.streams:
        live = live_scores(server, s.stream, result.end)
        assert sorted(live) == s.ts.tolist(), f"{s.stream}: scored points differ (missing or extra)"
        got = np.array([live[t] for t in s.ts.tolist()])
        np.testing.assert_allclose(got, s.scores, rtol=1e-5, atol=1e-6)
        worst = max(worst, float(np.max(np.abs(got - s.scores))))
        points += len(live)
    return {"points": points, "max_abs_diff": worst}


def exported(server: LiveServer, model: str, stream: str) -> tuple[float, float]:
    """vigil_stream_score and vigil_stream_level of a stream, from /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    values = {}
    for name in ("vigil_stream_score", "vigil_stream_level"):
        line = next(
            line
            for line in text.splitlines()
            if line.startswith(f'{name}{{model="{model}",stream="{stream}"}}')
        )
        values[name] = float(line.rsplit(" ", 1)[1])
    assert values["vigil_stream_level"] in LEVELS.values()
    return values["vigil_stream_score"], values["vigil_stream_level"]


def start_replica(
    models_dir: Path, redis_url: str, log_path: Path, env: dict[str, str], timeout_s: float = 90
) -> LiveServer:
    return LiveServer(models_dir, redis_url, log_path, **env).start(timeout_s)


def stop_replica(server: LiveServer, timeout_s: float = 30) -> None:
    """SIGTERM and wait; a replica that does not stop in time is killed, and the test fails."""
    if server.proc is None or server.proc.poll() is not None:
        return
    try:
        server.terminate(timeout_s)
    except subprocess.TimeoutExpired as exc:
        server.kill()
        raise AssertionError(
            f"vigil serve ignored SIGTERM for {timeout_s} s:\n{server.log_path.read_text()[-3000:]}"
        ) from exc
