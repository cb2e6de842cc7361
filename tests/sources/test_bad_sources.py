"""Sources that cannot be used are refused before anything is trained or served, with the query named: PromQL
that Prometheus refuses, a query without series, several series for one label value, a series without the
label, an unreachable server, a broken preset, and a bundle whose query the service's Prometheus refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port
from tests.service.live import LiveServer
from tests.sources.conftest import SENSORS, PrometheusProcess, SMDBundles, SMDFleet, query_args
from training.cli import main


def train_argv(url: str, fleet: SMDFleet, out: Path, *source: str) -> list[str]:
    return ["train", "--prometheus", url, *source, "--start", str(fleet.train_start), "--end",
            str(fleet.train_end), "--out", str(out), "--epochs", "1", "--quiet", "--no-report"]  # fmt: skip


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("bad=rate(smd_sensor[", "Prometheus refused 'rate(smd_sensor['"),
        ("gone=no_such_metric", "returned no series"),
        ("many=smd_sensor", "several series for instance="),
        ("lonely=sum(smd_sensor)", "a series without the label 'instance'"),
        ('text="a string"', "Prometheus refused"),
    ],
)
def test_training_refuses_a_query_it_cannot_use_and_names_it(
    query: str,
    message: str,
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = query.partition("=")[0]
    argv = train_argv(smd_prometheus.url, smd_fleet, tmp_path, *query_args()[:4], "--query", query)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"query {name!r}" in err and message in err, err
    assert not (tmp_path / "tvnet").exists()  # nothing written


def test_training_names_the_query_when_prometheus_does_not_answer(
    smd_fleet: SMDFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = train_argv(f"http://127.0.0.1:{free_port()}", smd_fleet, tmp_path, *query_args()[:2])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "query 's01'" in err and "did not answer" in err, err


@pytest.mark.parametrize(
    ("preset", "message"),
    [
        (
            "queries:\n  - {name: cpu, expr: up}\n  - {name: cpu, expr: up}\n",
            "query 'cpu' is named twice",
        ),
        ("queries:\n  - {name: cpu, expr: up}\n  - {name: mem}\n", "query 'mem' must have exactly the keys"),
        ("queries:\n  - {name: 'two words', expr: up}\n", "query 'two words'"),
        ("step: soon\nqueries:\n  - {name: cpu, expr: up}\n", "'soon' is not a duration"),
        ("queries: []\n", "'queries' must be a list"),
        ("queries:\n  - {name: cpu, expr: up}\nquerys: 1\n", "unknown keys ['querys']"),
        (
            "queries:\n  - {name: s01, expr: 'smd_sensor{sensor=\"s01\"}'}\n  - {name: broken, expr: 'sum by (instance'}\n",
            "query 'broken': Prometheus refused",
        ),
    ],
)
def test_a_bad_preset_is_refused_with_the_query_named(
    preset: str,
    message: str,
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(preset)
    assert main(train_argv(smd_prometheus.url, smd_fleet, tmp_path, "--preset", str(path))) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_the_service_refuses_to_start_with_a_query_its_prometheus_refuses(
    smd_bundles: SMDBundles,
    smd_prometheus: PrometheusProcess,
    redis_url: str,
    clean_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    models = tmp_path / "models"
    shutil.copytree(smd_bundles.models_dir, models)
    manifest_path = models / "smd" / "prom" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["source"]["queries"][2]["expr"] = "rate(smd_sensor{sensor='s03'}["  # as if edited by hand
    manifest_path.write_text(json.dumps(manifest))
    server = LiveServer(
        models, redis_url, tmp_path / "serve.log", VIGIL_SOURCES__PROMETHEUS_URL=smd_prometheus.url
    )
    with pytest.raises(RuntimeError, match="vigil serve exited") as refused:
        server.start(60)
    assert f"query {SENSORS[2]!r}: model 'smd': Prometheus refused" in str(refused.value)
