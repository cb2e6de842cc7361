"""``vigil serve`` with its private redis-server (``VIGIL_REDIS_URL=local``, what it also does when no Redis is
configured or answers): Redis and its temporary data directory go with the server on every exit path, and a
graceful stop exits 0.

Before the fix, each SIGTERM restart left one redis-server running with its data directory and exited 143
(uvicorn re-raises SIGTERM after its shutdown, so the ``atexit`` hook that stopped Redis never ran); SIGINT
stopped Redis but left the directory; SIGKILL left both.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from service.server import redis_reachable
from tests.service.conftest import auth, points_body
from tests.service.live import LiveServer

STARTED = re.compile(r"private redis-server on 127\.0\.0\.1:(\d+) \(data in (\S+)\)")


@dataclass(frozen=True)
class PrivateRedis:
    port: int
    data_dir: Path

    def processes(self) -> list[int]:
        """redis-server processes working in the data directory (Redis chdirs into ``--dir``; its title no
        longer shows the command line)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
                name = (entry / "comm").read_text().strip()
            except OSError:
                continue  # gone meanwhile, or not ours to read
            if name == "redis-server" and cwd.removesuffix(" (deleted)") == str(self.data_dir):
                found.append(int(entry.name))
        return found

    def answers(self) -> bool:
        return redis_reachable(f"redis://127.0.0.1:{self.port}/0")  # one PING, no client retries

    def gone(self) -> bool:
        return not self.processes() and not self.answers() and not self.data_dir.exists()


def start_on_private_redis(
    live_server: Callable[..., LiveServer], tmp: Path, name: str, rows: np.ndarray
) -> tuple[LiveServer, PrivateRedis]:
    """A ``vigil serve`` on its private Redis (data directory under ``tmp``), shown to keep its streams there."""
    tmp.mkdir(exist_ok=True)
    server = live_server("local", log_name=f"{name}.log", TMPDIR=str(tmp))
    match = STARTED.search(server.log_path.read_text())
    assert match is not None, server.log_path.read_text()
    private = PrivateRedis(int(match.group(1)), Path(match.group(2)))
    assert private.data_dir.parent == tmp and private.data_dir.is_dir()
    assert len(private.processes()) == 1
    body = points_body("private", rows, 0)
    response = httpx.post(f"{server.url}/score", json=body, headers=auth("all"), timeout=30)
    assert response.status_code == 200, response.text
    client = redis.Redis(port=private.port)
    assert client.exists("vigil:{private}:m")  # the server's streams live in its private Redis
    client.close()
    return server, private


def wait_gone(private: PrivateRedis, timeout_s: float) -> float:
    started = time.monotonic()
    while not private.gone():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(
                f"private Redis still there after {timeout_s} s: processes {private.processes()}, "
                f"answers {private.answers()}, data dir exists {private.data_dir.exists()}"
            )
        time.sleep(0.01)
    return time.monotonic() - started


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_graceful_stop_stops_the_private_redis_removes_its_data_and_exits_0(
    live_server: Callable[..., LiveServer],
    tmp_path: Path,
    test_series: np.ndarray,
    signum: signal.Signals,
    figures: Callable[..., None],
) -> None:
    statuses: list[int] = []
    left_running = dirs_left = 0
    for run in range(2):  # restarts must not accumulate redis-servers
        server, private = start_on_private_redis(live_server, tmp_path / "tmp", f"run{run}", test_series[:3])
        assert server.proc is not None
        server.proc.send_signal(signum)
        statuses.append(server.proc.wait(30))
        # Gone by the time the server has exited: nothing to wait for.
        left_running += len(private.processes())
        dirs_left = len(list((tmp_path / "tmp").glob("vigil-redis-*")))
    figures(
        signal=signum.name,
        restarts=2,
        exit_statuses=statuses,
        redis_left_running=left_running,
        data_dirs_left=dirs_left,
    )
    assert statuses == [0, 0]
    assert left_running == 0 and dirs_left == 0
    assert private.gone()


def test_a_killed_server_takes_its_private_redis_and_data_with_it(
    live_server: Callable[..., LiveServer],
    tmp_path: Path,
    test_series: np.ndarray,
    figures: Callable[..., None],
) -> None:
    server, private = start_on_private_redis(live_server, tmp_path / "tmp", "killed", test_series[:3])
    server.kill()  # SIGKILL: no handler, no finally, no atexit
    elapsed_s = wait_gone(private, timeout_s=5.0)
    figures(redis_and_data_gone_after_ms=round(elapsed_s * 1000, 1))
