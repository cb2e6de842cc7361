"""The Prometheus config and rules through promtool (offline), and the local stand-in's rendered config."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path
from types import ModuleType

import yaml

from tests.conftest import ROOT
from tests.deploy.conftest import PROMETHEUS_DIR, RULE_FILES, RULE_TEST_FILES, load_yaml, rules


def promtool(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, cwd=PROMETHEUS_DIR, timeout=60
    )


def load_stack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vigil_stack", ROOT / "deploy" / "stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_promtool_accepts_the_prometheus_config_and_its_rule_files(promtool_binary: Path) -> None:
    result = promtool(promtool_binary, "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout


def test_promtool_accepts_every_rule_file(promtool_binary: Path) -> None:
    assert RULE_FILES
    result = promtool(promtool_binary, "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass(promtool_binary: Path) -> None:
    assert RULE_TEST_FILES
    result = promtool(promtool_binary, "test", "rules", *map(str, RULE_TEST_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_severity_a_summary_and_a_firing_unit_test() -> None:
    fired = {
        case["alertname"]
        for path in RULE_TEST_FILES
        for test in load_yaml(path)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = rules("alert")
    assert alerts
    for alert in alerts:
        assert alert["labels"]["severity"] in ("warning", "critical"), alert["alert"]
        assert alert["annotations"]["summary"], alert["alert"]
        assert alert["alert"] in fired, f"{alert['alert']}: no promtool test shows it firing"


def test_stack_renders_a_valid_local_prometheus_config(promtool_binary: Path, tmp_path: Path) -> None:
    config = load_stack().render_prometheus_config(
        "127.0.0.1:18000", "127.0.0.1:19090", "1s", "127.0.0.1:19093"
    )
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets == {"vigil": ["127.0.0.1:18000"], "prometheus": ["127.0.0.1:19090"]}
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"] == [{"targets": ["127.0.0.1:19093"]}]
    assert config["global"]["scrape_interval"] == config["global"]["evaluation_interval"] == "1s"
    rendered = tmp_path / "prometheus.yml"  # elsewhere than deploy/: the rule paths must be absolute
    rendered.write_text(yaml.safe_dump(config))
    result = promtool(promtool_binary, "check", "config", str(rendered))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout
