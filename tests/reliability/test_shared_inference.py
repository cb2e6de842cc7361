"""`vigil serve --workers 2` with one shared inference process: the API processes' windows are batched in one
process that owns the sessions; scores equal offline scoring; killing that process fails only the requests it
held (500 `inference_failed`), a new one takes over, and nothing hangs."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from models.runtime import load_bundle
from tests.reliability.conftest import RedisProcess
from tests.service.conftest import auth, points_body, scores_by_ts
from tests.service.live import LiveServer
from training.evaluate import score_test_series


def inference_pids(parent: int) -> list[int]:
    """The shared inference processes started by ``parent``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if ppid == parent and "service.inference_server" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def shared(live_server: Callable[..., LiveServer], aof_redis: RedisProcess) -> LiveServer:
    return live_server(aof_redis.url, VIGIL_WORKERS="2", VIGIL_INFERENCE="shared")


def test_two_api_processes_score_through_one_inference_process_like_offline(
    shared: LiveServer, bundle_dir: Path, test_series: np.ndarray, tmp_path: Path
) -> None:
    assert shared.proc is not None
    assert len(inference_pids(shared.proc.pid)) == 1
    np.save(tmp_path / "series.npy", test_series)
    offline = score_test_series(load_bundle(bundle_dir), tmp_path / "series.npy").scores
    want = {float(i): float(s) for i, s in enumerate(offline) if np.isfinite(s)}
    bodies = []
    with httpx.Client(base_url=shared.url, headers=auth("all"), timeout=60) as client:
        for offset in range(0, len(test_series), 25):  # two workers take turns on the connections
            response = client.post(
                "/score", json=points_body("shared", test_series[offset : offset + 25], offset)
            )
            assert response.status_code == 200, response.text
            bodies.append(response.json())
        metrics = client.get("/metrics").text
    got = scores_by_ts(bodies)
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose(
        [got[t] for t in sorted(want)], [want[t] for t in sorted(want)], rtol=1e-5, atol=1e-7
    )
    batches = [
        line
        for line in metrics.splitlines()
        if line.startswith('vigil_batch_size_windows_count{model="tvnet"}')
    ]
    assert batches and float(batches[0].split()[-1]) > 0  # the inference process's batches, aggregated


def test_one_api_process_beside_the_inference_process_exports_its_own_metrics_too(
    live_server: Callable[..., LiveServer], aof_redis: RedisProcess, test_series: np.ndarray
) -> None:
    """With one API process (no uvicorn workers to spawn) its requests, latencies and loop lag join the
    inference process's batches in ``/metrics``: they were missing, since the process had chosen in-memory
    metric values before the shared metrics directory existed."""
    server = live_server(aof_redis.url, VIGIL_WORKERS="1", VIGIL_INFERENCE="shared")
    with httpx.Client(base_url=server.url, headers=auth("all"), timeout=60) as client:
        response = client.post("/score", json=points_body("one-api", test_series[:120], 0))
        assert response.status_code == 200, response.text
        time.sleep(0.3)  # a few wake-ups of the loop-lag probe (every 50 ms)
        metrics = client.get("/metrics").text

    def value(prefix: str) -> float:
        lines = [line for line in metrics.splitlines() if line.startswith(prefix)]
        assert lines, f"{prefix} is not exported"
        return sum(float(line.split()[-1]) for line in lines)

    assert value('vigil_requests_total{method="POST",route="/score",status="200"}') == 1
    assert value("vigil_event_loop_lag_seconds_count") > 0
    assert value('vigil_points_received_total{model="tvnet"}') == 120
    assert value('vigil_batch_size_windows_count{model="tvnet"}') > 0  # the inference process's


def test_a_killed_inference_process_fails_only_its_requests_and_is_replaced(
    shared: LiveServer, test_series: np.ndarray, figures: Callable[..., None]
) -> None:
    assert shared.proc is not None
    (first,) = inference_pids(shared.proc.pid)
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def load(stream_id: str) -> None:
        with httpx.Client(base_url=shared.url, headers=auth("all"), timeout=30) as client:
            offset = 0
            while not stop.is_set():
                rows = test_series[offset % 500 : offset % 500 + 20]
                response = (
                    client.post("/score", json={"window": test_series[:100].tolist()})
                    if offset % 40
                    else (client.post("/score", json=points_body(stream_id, rows, offset)))
                )
                body = response.json()
                outcomes[f"{response.status_code} {body.get('code', '')}".strip()] += 1
                offset += 20

    threads = [threading.Thread(target=load, args=(f"kill-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    os.kill(first, signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + 30
    while not (pids := inference_pids(shared.proc.pid)) or pids == [first]:
        assert time.monotonic() < deadline, "no new inference process"
        time.sleep(0.1)
    replaced_s = time.monotonic() - killed
    before = outcomes["200"]
    time.sleep(3)
    stop.set()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads)  # nothing hangs
    assert set(outcomes) <= {"200", "500 inference_failed", "503 overloaded"}, outcomes
    assert outcomes["200"] > before  # served again after the restart
    figures(outcomes=dict(outcomes), replaced_in_s=round(replaced_s, 2))


def test_the_inference_process_outlives_neither_a_killed_server_nor_its_metrics_folder(
    live_server: Callable[..., LiveServer], aof_redis: RedisProcess
) -> None:
    """`vigil serve` SIGKILLed (or crashed): its inference process, in a session of its own so that a group
    signal cannot stop it before the API processes drain, sees its parent gone and stops, instead of holding
    the models (a GPU's memory) for good (found by a review: 8 s later it still ran)."""
    server = live_server(aof_redis.url, VIGIL_INFERENCE="shared")
    assert server.proc is not None
    (inference,) = inference_pids(server.proc.pid)
    assert os.getsid(inference) != os.getsid(server.proc.pid)  # a Ctrl-C to the group does not reach it
    server.proc.kill()
    server.proc.wait(10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{inference}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    stat = Path(f"/proc/{inference}/stat")
    assert not stat.exists() or stat.read_text().split(")")[1].split()[0] == "Z", (
        "the inference process outlived it"
    )


def test_a_reload_reaches_the_shared_inference_process(
    bundle_dir: Path, aof_redis: RedisProcess, tmp_path: Path, test_series: np.ndarray
) -> None:
    """The API process reloads and answers with the new version; the inference process, which computes the
    scores, must follow: it kept the old version's scoring for good (found by a review). The new version scores
    with another aggregation, so its scores differ."""
    from tests.service.test_models_admin import new_version

    models = tmp_path / "models"
    first = new_version(models, bundle_dir, "a")
    manifest = json.loads((first / "manifest.json").read_text())
    server = LiveServer(models, aof_redis.url, tmp_path / "serve.log", VIGIL_INFERENCE="shared").start()
    window = {"window": test_series[100:200].tolist()}
    try:
        with httpx.Client(base_url=server.url, headers=auth("all"), timeout=30) as client:
            before = client.post("/score", json=window).json()
            assert before["version"] == "a"
            new_version(models, first, "b", score={**manifest["score"], "aggregation": "max"})
            assert client.post("/admin/models/reload").json()["models"][0]["version"] == "b"
            deadline = time.monotonic() + 15
            while True:
                after = client.post("/score", json=window).json()
                if [p["score"] for p in after["scores"]] != [p["score"] for p in before["scores"]]:
                    break
                assert time.monotonic() < deadline, "the inference process kept the old version"
                time.sleep(0.3)
            assert after["version"] == "b"
    finally:
        server.terminate(20)
