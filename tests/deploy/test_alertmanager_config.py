"""deploy/alertmanager/alertmanager.yml through amtool (Debian's prometheus-alertmanager package): it loads,
Vigil's anomaly alerts and Prometheus's rule alerts reach their receivers, and critical inhibits warning for
the same stream. (The real Alertmanager with it runs in tests/deploy/test_live_metrics.py.)"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import ALERTMANAGER_CONFIG, RULE_FILES, load_yaml


def amtool(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)


def test_amtool_accepts_the_alertmanager_config(amtool_binary: Path) -> None:
    result = amtool(amtool_binary, "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (
            ["alertname=VigilAnomaly", "stream=pump-7", "model=tvnet", "severity=critical"],
            "anomalies-placeholder",
        ),
        (
            ["alertname=VigilAnomaly", "stream=pump-7", "model=tvnet", "severity=warning"],
            "anomalies-placeholder",
        ),
        *[
            (
                [f"alertname={rule['alert']}", f"severity={rule['labels']['severity']}"],
                "operations-placeholder",
            )
            for path in RULE_FILES
            for group in load_yaml(path)["groups"]
            for rule in group["rules"]
            if "alert" in rule
        ],
    ],
)
def test_each_kind_of_alert_reaches_its_receiver(
    amtool_binary: Path, labels: list[str], receiver: str
) -> None:
    result = amtool(
        amtool_binary,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receiver}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_receivers_are_documented_placeholders_and_critical_inhibits_warning() -> None:
    config = load_yaml(ALERTMANAGER_CONFIG)
    names = {receiver["name"] for receiver in config["receivers"]}
    assert names == {"anomalies-placeholder", "operations-placeholder"}
    assert "PLACEHOLDER" in ALERTMANAGER_CONFIG.read_text()
    (anomalies,) = config["route"]["routes"]
    assert anomalies["group_by"] == ["alertname", "stream"]
    (inhibit,) = config["inhibit_rules"]
    assert 'severity="critical"' in inhibit["source_matchers"]
    assert 'severity="warning"' in inhibit["target_matchers"]
    assert "stream" in inhibit["equal"]
