"""The processes under test: a private redis-server, ``vigil serve`` (or a peer server) as a subprocess, and the
CPU time each of them uses, read from ``/proc`` (the whole process tree, so uvicorn's workers count).

Every server listens on a free loopback port and is stopped (SIGTERM, then SIGKILL) when its context ends.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "artifacts" / "bench"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (uvicorn's master and workers, bentoml's service processes)."""
    found, frontier = [], [pid]
    while frontier:
        current = frontier.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                frontier.extend(int(c) for c in (task / "children").read_text().split())
            except OSError:
                continue
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree so far, including its reaped children."""
    total = 0.0
    for member in process_tree(pid):
        try:
            stat = Path(f"/proc/{member}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        # utime, stime, and cutime, cstime: a child that exited (Redis's AOF rewrite) still counts
        total += sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
    return total


@dataclass
class CPUMeter:
    """CPU used by named process trees between :meth:`start` and :meth:`stop`, as % of one core."""

    pids: Mapping[str, int]
    _begin: dict[str, float] = field(default_factory=dict)
    _t0: float = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._begin = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        return {
            name: 100.0 * (cpu_seconds(pid) - self._begin[name]) / elapsed for name, pid in self.pids.items()
        }


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200; fails early when ``proc`` exits."""
    deadline = time.monotonic() + timeout_s
    last_error = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last_error = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout_s:.0f} s ({last_error})")


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass(frozen=True)
class RedisServer:
    url: str
    port: int
    pid: int

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


@contextmanager
def redis_server(aof: bool = True) -> Iterator[RedisServer]:
    """A private redis-server on a free port: AOF ``everysec`` like the deployment, or no persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; run deploy/setup.sh")
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix="redis-", dir=BENCH_DIR))
    port = free_port()
    persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if aof else ["--appendonly", "no"]
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--save",
            "",
            *persistence,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.02)
        client.close()
        yield RedisServer(f"redis://127.0.0.1:{port}/0", port, proc.pid)
    finally:
        stop_process(proc)
        shutil.rmtree(data_dir, ignore_errors=True)


@dataclass(frozen=True)
class Server:
    """A running HTTP server under test."""

    name: str
    base_url: str
    port: int
    pid: int
    headers: dict[str, str]  # what every request must carry (the bench API key)


@contextmanager
def server_process(
    name: str,
    command: Sequence[str],
    port: int,
    ready_path: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    headers: dict[str, str] | None = None,
    ready_timeout_s: float = 120.0,
) -> Iterator[Server]:
    """Start ``command`` (which must listen on ``port``), wait for ``ready_path``, stop it at the end.

    Its output goes to ``artifacts/bench/logs/<name>-<port>.log`` (printed on a failed start)."""
    log_dir = BENCH_DIR / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=cwd
        )
        try:
            try:
                wait_http(f"http://127.0.0.1:{port}{ready_path}", ready_timeout_s, proc)
            except RuntimeError:
                sys.stderr.write(log_path.read_text(errors="replace")[-4000:])
                raise
            yield Server(name, f"http://127.0.0.1:{port}", port, proc.pid, headers or {})
        finally:
            stop_process(proc)


def bench_api_key() -> str:
    """A fresh random key per run: the benchmark exercises authentication as deployed."""
    return secrets.token_hex(24)


@contextmanager
def vigil_server(
    models_dir: Path,
    redis_url: str,
    workers: int = 1,
    intra_op_threads: int | None = None,
    log_level: str = "warning",
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """``vigil serve`` on a free port with a bench API key, on the CPU provider (``extra_env`` may set
    ``VIGIL_PROVIDER``); settings travel as ``VIGIL_…`` variables."""
    port = free_port()
    key = bench_api_key()
    env = {
        "VIGIL_MODELS_DIR": str(models_dir),
        "VIGIL_REDIS_URL": redis_url,
        "VIGIL_PROVIDER": "cpu",
        "VIGIL_LOG_LEVEL": log_level,
        "VIGIL_API_KEYS": json.dumps([{"name": "bench", "key": key, "roles": ["score", "read"]}]),
    }
    if workers > 1:  # workers share metrics through files (one process keeps its own registry)
        env["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vigil-metrics-", dir=BENCH_DIR)
    if intra_op_threads is not None:
        env["VIGIL_INTRA_OP_THREADS"] = str(intra_op_threads)
    env.update(extra_env or {})
    vigil = ROOT / ".venv" / "bin" / "vigil"
    command = [str(vigil), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    with server_process(
        "vigil", command, port, "/readyz", env=env, cwd=ROOT, headers={"Authorization": f"Bearer {key}"}
    ) as server:
        yield server
