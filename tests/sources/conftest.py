"""Real Prometheus servers for the source tests (Debian's ``prometheus`` and ``promtool``, deploy/setup.sh):

- ``smd_fleet``: two "machines" cut from the repository's SMD sample (training rows, then test rows with a
  labelled anomaly each), written as files and backfilled into a TSDB with ``promtool tsdb create-blocks-from
  openmetrics`` (one series per machine and sensor, ``instance`` = the machine, one row a minute from
  2026-01-01T00:00Z);
- ``smd_prometheus``: a Prometheus serving that TSDB on a free port;
- ``smd_bundles``: a tiny TVNet trained from the files and the same trained by ``vigil train --prometheus``.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import ROOT, SAMPLE, free_port

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
STEP_S = 60.0
# (machine, training rows of train.txt.gz, test rows of test.txt.gz): each test slice holds a labelled anomaly
# (rows 4629-4688 and 5875-5951 of the sample's test part).
MACHINES = (
    ("machine-a", slice(0, 1000), slice(4400, 4800)),
    ("machine-b", slice(7000, 8000), slice(5700, 6100)),
)
N_TRAIN, N_TEST = 1000, 400
N_SENSORS = 38
SENSORS = [f"s{i:02d}" for i in range(1, N_SENSORS + 1)]
MODEL_ARGS = {  # tiny: the suite runs on 2 shared cores
    "window": "40",
    "stride": "10",
    "train-stride": "4",
    "epochs": "1",
    "hyperparameters": json.dumps({"d_model": 8, "n_blocks": 1}),
}


FIGURES_FILE = ROOT / "artifacts" / "sources" / "figures.jsonl"
_FIGURES: list[dict[str, Any]] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures each scenario recorded (also appended to artifacts/sources/figures.jsonl)."""
    if not _FIGURES:
        return
    terminalreporter.section("source figures")
    for entry in _FIGURES:
        values = ", ".join(f"{k}={v}" for k, v in entry.items() if k not in ("scenario", "at"))
        terminalreporter.write_line(f"{entry['scenario']}: {values}")


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


def query_args() -> list[str]:
    return [arg for name in SENSORS for arg in ("--query", f'{name}=smd_sensor{{sensor="{name}"}}')]


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} not found: apt-get install -y prometheus prometheus-node-exporter (deploy/setup.sh)"
        )
    return path


class PrometheusProcess:
    """``prometheus`` on a loopback port with a data directory and a config; stoppable and restartable on both."""

    def __init__(
        self, data_dir: Path, config: dict[str, object], log_path: Path, port: int | None = None
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = data_dir.parent / f"{data_dir.name}.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> PrometheusProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                require("prometheus"),
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_dir}",
                "--storage.tsdb.retention.time=100y",  # else the backfilled 2026 samples are deleted at start
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("prometheus did not become ready")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def query(self, expr: str) -> list[dict[str, object]]:
        body = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", body
        result: list[dict[str, object]] = body["data"]["result"]
        return result


@dataclass(frozen=True)
class SMDFleet:
    directory: Path
    tsdb: Path  # the backfilled blocks (copy it before serving it from a Prometheus that is restarted)
    train_files: list[Path]
    test_files: list[Path]
    label_files: list[Path]

    @property
    def train_start(self) -> float:
        return T0

    @property
    def train_end(self) -> float:
        return T0 + (N_TRAIN - 1) * STEP_S

    @property
    def test_start(self) -> float:
        return T0 + N_TRAIN * STEP_S

    @property
    def test_end(self) -> float:
        return T0 + (N_TRAIN + N_TEST - 1) * STEP_S


def _lines(name: str) -> list[str]:
    with gzip.open(SAMPLE / name, "rt") as handle:
        return handle.read().splitlines()


@pytest.fixture(scope="session")
def smd_fleet(tmp_path_factory: pytest.TempPathFactory) -> SMDFleet:
    out = tmp_path_factory.mktemp("smd-fleet")
    train, test, labels = _lines("train.txt.gz"), _lines("test.txt.gz"), _lines("test_label.txt.gz")
    files: dict[str, list[Path]] = {"train": [], "test": [], "labels": []}
    series: list[str] = []
    for machine, train_rows, test_rows in MACHINES:
        rows = train[train_rows] + test[test_rows]
        for kind, text in (
            ("train", train[train_rows]),
            ("test", test[test_rows]),
            ("labels", labels[test_rows]),
        ):
            path = out / f"{machine}-{kind}.txt"
            path.write_text("\n".join(text) + "\n")
            files[kind].append(path)
        # The file's own text for each value: Prometheus keeps the same float64 the file parses to.
        cells = [row.split(",") for row in rows]
        for column, sensor in enumerate(SENSORS):
            labels_text = f'instance="{machine}",sensor="{sensor}"'
            series.extend(
                f"smd_sensor{{{labels_text}}} {cells[i][column]} {T0 + i * STEP_S:.0f}"
                for i in range(len(rows))
            )
    om = out / "smd.om"
    om.write_text("# TYPE smd_sensor gauge\n" + "\n".join(series) + "\n# EOF\n")
    tsdb = out / "tsdb"
    result = subprocess.run(
        [require("promtool"), "tsdb", "create-blocks-from", "openmetrics", "--quiet", str(om), str(tsdb)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    om.unlink()
    return SMDFleet(out, tsdb, files["train"], files["test"], files["labels"])


def serve_tsdb(
    fleet: SMDFleet, directory: Path, scrape: dict[str, object] | None = None
) -> PrometheusProcess:
    """A Prometheus on a private copy of the fleet's TSDB (optionally scraping ``scrape`` jobs)."""
    data = directory / "data"
    shutil.copytree(fleet.tsdb, data)
    config: dict[str, object] = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}}
    if scrape:
        config["scrape_configs"] = [scrape]
    return PrometheusProcess(data, config, directory / "prometheus.log").start()


@pytest.fixture(scope="session")
def smd_prometheus(
    smd_fleet: SMDFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusProcess]:
    server = serve_tsdb(smd_fleet, tmp_path_factory.mktemp("smd-prometheus"))
    yield server
    server.stop()


@dataclass(frozen=True)
class SMDBundles:
    from_files: Path
    from_prometheus: Path
    models_dir: Path  # holds only the Prometheus-trained bundle (smd/prom), for `vigil serve`


@pytest.fixture(scope="session")
def smd_bundles(
    smd_fleet: SMDFleet, smd_prometheus: PrometheusProcess, tmp_path_factory: pytest.TempPathFactory
) -> SMDBundles:
    from training.cli import main
    from training.config import TrainConfig
    from training.pipeline import train_bundle

    out = tmp_path_factory.mktemp("smd-bundles")
    from_files = train_bundle(
        TrainConfig(
            model="tvnet",
            train_path=smd_fleet.train_files,
            out_dir=out / "files",
            name="smd",
            version="files",
            window_length=int(MODEL_ARGS["window"]),
            stride=int(MODEL_ARGS["stride"]),
            train_stride=int(MODEL_ARGS["train-stride"]),
            epochs=int(MODEL_ARGS["epochs"]),
            hyperparameters=json.loads(MODEL_ARGS["hyperparameters"]),
            feature_names=SENSORS,
            progress=False,
            report=False,
        )
    )
    argv = ["train", "--prometheus", smd_prometheus.url, *query_args(), "--by", "instance", "--step", "60s"]
    argv += ["--start", "2026-01-01T00:00:00Z", "--end", str(smd_fleet.train_end)]
    argv += ["--out", str(out / "prometheus"), "--name", "smd", "--version", "prom", "--quiet", "--no-report"]
    argv += [arg for key, value in MODEL_ARGS.items() for arg in (f"--{key}", value)]
    assert main(argv) == 0
    return SMDBundles(from_files, out / "prometheus" / "smd" / "prom", out / "prometheus")
