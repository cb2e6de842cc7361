"""Session fixtures: a real redis-server, a tiny TVNet bundle trained and exported once, the app."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "smd-machine-1-2"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port p with p + 10000 free too: a cluster node's bus listens there (and MEET assumes it)."""
    import random

    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 50_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def start_redis_server(
    directory: Path, *extra: str, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """A private redis-server on a free (or the given) loopback port; the binary comes from deploy/setup.sh."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed; run deploy/setup.sh")
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.02)
    client.close()
    return proc, port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("VIGIL_TEST_REDIS_URL")
    if configured:
        yield configured
        return
    proc, port = start_redis_server(tmp_path_factory.mktemp("redis"), "--appendonly", "no")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def clean_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny TVNet trained for one epoch on a slice of the sample, exported and calibrated, once per session."""
    from training.config import TrainConfig
    from training.pipeline import train_bundle

    out = tmp_path_factory.mktemp("models")
    train_bundle(
        TrainConfig(
            model="tvnet",
            train_path=SAMPLE / "train.txt.gz",
            out_dir=out,
            version="test",
            max_rows=3000,
            epochs=1,
            train_stride=10,
            stride=10,
            hyperparameters={"d_model": 16, "n_blocks": 2},
            progress=False,
        )
    )
    return out


@pytest.fixture(scope="session")
def bundle_dir(models_dir: Path) -> Path:
    return models_dir / "tvnet" / "test"


CLUSTER_NODE_ARGS = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--appendonly", "no")


def start_cluster_node(directory: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], int]:
    """One node of a test Redis Cluster (again on its ``port`` after a stop: nodes.conf keeps its slots)."""
    return start_redis_server(directory, *CLUSTER_NODE_ARGS, port=port or free_cluster_port())


def wait_cluster_ok(port: int, timeout_s: float = 30) -> None:
    client = redis.Redis(port=port)
    deadline = time.monotonic() + timeout_s
    try:
        while client.cluster("info").get("cluster_state") != "ok":  # redis-py parses the reply into a dict
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not reach cluster_state:ok")
            time.sleep(0.1)
    finally:
        client.close()


def start_redis_cluster(base: Path, procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """A three-node Redis Cluster on loopback under ``base``; its processes are appended to ``procs`` as they
    start (the caller stops them); returns the nodes' ports."""
    ports = []
    for i in range(3):
        proc, port = start_cluster_node(base / f"node{i}")
        procs.append(proc)
        ports.append(port)
    nodes = [f"127.0.0.1:{p}" for p in ports]
    subprocess.run(
        ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    wait_cluster_ok(ports[0])
    return ports


@pytest.fixture(scope="session")
def redis_cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A three-node Redis Cluster on loopback, built from `redis-server --cluster-enabled yes` processes."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = start_redis_cluster(tmp_path_factory.mktemp("cluster"), procs)
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
