"""Fixtures for the reliability suite: Redis processes that can be killed, live servers, /proc samplers.

Tests marked ``slow`` (overload, soak-like runs, thousands of generated cases) are deselected by the default
``-m "not slow"`` in pyproject.toml and run with ``-m slow``; the default run stays short on 2 cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from tests.conftest import start_redis_server
from tests.service.conftest import (
    auth,
    make_settings,
    test_series,  # noqa: F401 - re-exported fixture
)
from tests.service.live import LiveServer

HERE = Path(__file__).resolve().parent
FIGURES_FILE = HERE.parents[1] / "artifacts" / "reliability" / "figures.jsonl"
_FIGURES: list[dict[str, Any]] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures each scenario recorded (also appended to artifacts/reliability/figures.jsonl)."""
    if not _FIGURES:
        return
    terminalreporter.section("reliability figures")
    for entry in _FIGURES:
        name = entry["scenario"]
        values = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("scenario", "at"))
        terminalreporter.write_line(f"{name}: {values}")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``figures(**values)`` records a scenario's measured figures under the test's name."""

    def record(**values: Any) -> None:
        entry = {"scenario": request.node.name, "at": time.strftime("%Y-%m-%dT%H:%M:%S"), **values}
        _FIGURES.append(entry)
        FIGURES_FILE.parent.mkdir(parents=True, exist_ok=True)
        with FIGURES_FILE.open("a") as out:
            out.write(json.dumps(entry, default=str) + "\n")

    return record


class RedisProcess:
    """A private redis-server (AOF ``everysec`` unless told otherwise) that a test may SIGKILL and restart on
    the same port and data directory."""

    def __init__(self, directory: Path, aof: bool = True) -> None:
        self.directory = directory
        self.args = ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else ["--appendonly", "no"]
        self.proc, self.port = start_redis_server(directory, *self.args)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def restart(self) -> None:
        self.proc, _ = start_redis_server(self.directory, *self.args, port=self.port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def live_server(models_dir: Path, tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """``live_server(redis_url, **env)`` starts a ``vigil serve`` process; every one is stopped at the end."""
    started: list[LiveServer] = []

    def start(redis_url: str, log_name: str = "serve.log", **env: str) -> LiveServer:
        server = LiveServer(models_dir, redis_url, tmp_path / log_name, **env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            try:
                server.terminate(20)
            except subprocess.TimeoutExpired:
                server.kill()


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def snapshot(client: redis.Redis) -> dict[bytes, bytes]:
    """Every key with its serialised value: two equal snapshots mean no state changed."""
    return {key: client.dump(key) or b"" for key in client.scan_iter(count=1000)}


@pytest.fixture(scope="module")
def api(models_dir: Path, redis_url: str) -> Iterator[tuple[TestClient, redis.Redis]]:
    """One app for the module (hypothesis runs many examples against it) on the session's Redis."""
    from tests.reliability.hostile import ROW, stream_body  # hostile.py imports this module's snapshot

    store = redis.Redis.from_url(redis_url)
    store.flushdb()
    settings_ = make_settings(models_dir, redis_url, max_body_bytes=1_000_000, max_points_per_request=500)
    with TestClient(create_app(settings_), headers=auth("all")) as client:
        assert client.post("/score", json=stream_body("bound", [(0.0, ROW)])).status_code == 200
        yield client, store
    store.close()
