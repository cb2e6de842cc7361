"""The node-exporter preset against two real ``prometheus-node-exporter`` processes (Debian) scraped every second
by a real Prometheus: every query returns exactly one finite series per instance; and (slow) a model trained on
a few minutes of it serves both hosts end to end. Plumbing, not quality: two minutes of an idle host teach
nothing about anomalies."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from models.prometheus import PrometheusClient
from models.source import SourceQuery
from tests.conftest import free_port
from tests.service.conftest import auth
from tests.service.live import LiveServer
from tests.sources.conftest import PrometheusProcess, require
from tests.sources.live import stop_replica
from training.cli import main
from training.preset import load_preset

SCRAPE_S = 1.0


@dataclass(frozen=True)
class NodeFleet:
    prometheus: PrometheusProcess
    instances: list[str]
    started: float  # wall clock, when Prometheus had scraped both exporters


@pytest.fixture(scope="module")
def node_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeFleet]:
    directory = tmp_path_factory.mktemp("node-exporter")
    exporters: list[subprocess.Popen[bytes]] = []
    instances = []
    prometheus = None
    try:
        for i in range(2):
            port = free_port()
            log = (directory / f"exporter-{i}.log").open("wb")
            exporters.append(
                subprocess.Popen(
                    [require("prometheus-node-exporter"), f"--web.listen-address=127.0.0.1:{port}"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            log.close()
            instances.append(f"127.0.0.1:{port}")
        job = {
            "job_name": "node",
            "scrape_interval": f"{SCRAPE_S:g}s",
            "static_configs": [{"targets": instances}],
        }
        config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [job]}
        prometheus = PrometheusProcess(directory / "data", config, directory / "prometheus.log").start()
        deadline = time.monotonic() + 30
        while len(prometheus.query('up{job="node"} == 1')) < 2:
            assert time.monotonic() < deadline, "node_exporter not scraped"
            time.sleep(0.5)
        yield NodeFleet(prometheus, instances, time.time())
    finally:
        if prometheus is not None:
            prometheus.stop()
        for exporter in exporters:
            exporter.terminate()
            exporter.wait(10)


def test_every_preset_query_returns_one_finite_series_per_instance(node_fleet: NodeFleet) -> None:
    source = load_preset("node-exporter")
    assert 20 <= len(source.queries) <= 40
    while time.time() < node_fleet.started + 4 * SCRAPE_S:  # rate() needs two samples in its window
        time.sleep(0.5)
    end = time.time() - SCRAPE_S
    wrong = {}
    with PrometheusClient(node_fleet.prometheus.url) as client:
        for query in source.queries:
            got = client.query_range(query, source.by, end - 2, end, 1.0)
            finite = {
                v: bool(s.values.size) and all(x == x for x in s.values.tolist()) for v, s in got.items()
            }
            if sorted(got) != sorted(node_fleet.instances) or not all(finite.values()):
                wrong[query.name] = (sorted(got), finite)
        assert not wrong, f"queries without exactly one finite series per instance: {wrong}"
        check = SourceQuery(name="up", expr='up{job="node"}')
        client.check(check, end)  # the instant path the service checks at start-up


@pytest.mark.slow
def test_a_model_trained_on_node_exporter_metrics_serves_both_hosts(
    node_fleet: NodeFleet, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    rows_needed = 130  # window 20: 20% validation must hold a window, per host
    while time.time() < node_fleet.started + rows_needed * SCRAPE_S + 5:
        time.sleep(1)
    models = tmp_path / "models"
    argv = ["train", "--prometheus", node_fleet.prometheus.url, "--preset", "node-exporter", "--step", "1s"]
    argv += [
        "--range",
        f"{rows_needed}s",
        "--out",
        str(models),
        "--name",
        "node",
        "--version",
        "v1",
        "--quiet",
    ]
    argv += ["--window", "20", "--stride", "5", "--train-stride", "2", "--epochs", "1", "--no-report"]
    argv += ["--hyperparameters", '{"d_model": 8, "n_blocks": 1}']
    assert main(argv) == 0
    env = {"VIGIL_SOURCES__PROMETHEUS_URL": node_fleet.prometheus.url, "VIGIL_SOURCES__SETTLE_S": "2"}
    server = LiveServer(models, redis_url, tmp_path / "serve.log", **env).start(90)
    try:
        deadline = time.monotonic() + 60
        for instance in node_fleet.instances:
            while True:
                response = httpx.get(
                    f"{server.url}/streams/{instance}/scores", headers=auth("reader"), timeout=5
                )
                if response.status_code == 200 and len(response.json()["scores"]) >= 20:
                    break
                assert time.monotonic() < deadline, f"{instance}: no scores ({response.text})"
                time.sleep(1)
        status = httpx.get(f"{server.url}/readyz", timeout=5).json()["sources"]["node"]
        assert status["state"] == "ok" and status["polling"] and status["lag_s"] < 5
    finally:
        stop_replica(server)
