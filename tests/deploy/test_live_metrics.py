"""The dashboard and the recording rules against live data: deploy/stack.py runs ``vigil serve`` (session
``models_dir`` and ``redis_url``) and a real Prometheus scraping it every second with the repository's
rules; its ``--replay`` streams 800 rows of the SMD test set with a spike, and the test adds bad requests
and a retry. Then every PromQL expression of the dashboard and of the recording rules must return finite data.

The tests share one stack (module fixture) and the last one stops it with Ctrl-C (SIGINT): keep it last.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.replay import read_series
from tests.conftest import ROOT, SAMPLE, free_port
from tests.deploy.conftest import DOCKERFILE, SOURCE_ROW, dashboard_queries, row_queries, rules

ROWS = 800  # window 100, stride 10: every row gets scored
SPIKE_ROWS = slice(400, 420)  # +5 on every sensor (the sample is min-max scaled to [0, 1]): critical scores
CHUNK = 25
# Points arrive over ~2 s (several 1 s scrapes), as a live stream would. In one burst between two scrapes, the
# histograms that service/metrics.py does not create at start-up (batch size, queue wait, Redis latency) would
# appear already holding the whole burst, and their rates would be 0/0 until more traffic came (until
# Metrics.initialise_model creates them at 0 as it does the inference histogram).
RATE_POINTS_PER_S = 400
SELECTOR = re.compile(r"(?<![\w:])(vigil_\w+|up|[a-z_]+:\w+:\w+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


@dataclass
class LiveStack:
    proc: subprocess.Popen[bytes]
    output: Path
    vigil_url: str
    vigil_port: int
    prometheus_url: str
    prometheus_port: int
    api_key: str
    stream_id: str
    alertmanager_url: str
    alertmanager_port: int

    def log(self, tail: int | None = 6000) -> str:
        text = self.output.read_text(errors="replace")
        return text if tail is None else text[-tail:]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query through Prometheus's HTTP API; a PromQL error fails the test with its message."""
        response = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
        if response.status_code == 503:  # Prometheus up but not ready (TSDB still opening on a busy machine)
            raise PrometheusNotReady(f"{expr}: HTTP 503 {response.text[:200]!r}")
        assert response.headers.get("content-type", "").startswith("application/json"), (
            f"{expr}: HTTP {response.status_code} {response.text[:200]!r} from {self.prometheus_url}\n{self.log()}"
        )
        body = response.json()
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def wait_for(self, what: str, check: Callable[[], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._holds(check):
            if self.proc.poll() is not None:
                pytest.fail(
                    f"deploy/stack.py exited ({self.proc.returncode}) waiting for {what}:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} after {timeout_s:.0f} s:\n{self.log()}")
            time.sleep(0.25)

    @staticmethod
    def _holds(check: Callable[[], bool]) -> bool:
        try:
            return check()
        except (httpx.TransportError, PrometheusNotReady):  # Prometheus not listening, or not ready, yet
            return False


class PrometheusNotReady(Exception):
    pass


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    values = [float(sample["value"][1]) for sample in result]
    return [v for v in values if math.isfinite(v)]


def total(stack: LiveStack, expr: str) -> float:
    return sum(finite_values(stack.query(expr)))


def spiked_series(path: Path) -> Path:
    series = read_series(SAMPLE / "test.txt.gz")[:ROWS].copy()
    series[SPIKE_ROWS] += 5.0
    np.save(path, series)
    return path


@pytest.fixture(scope="module")
def live_stack(
    models_dir: Path, redis_url: str, prometheus_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveStack]:
    directory = tmp_path_factory.mktemp("stack")
    vigil_port, prometheus_port, alertmanager_port = free_port(), free_port(), free_port()
    api_key = secrets.token_hex(16)
    stream_id = f"live-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "VIGIL_PROVIDER": "cpu",
        "VIGIL_INTRA_OP_THREADS": "1",
        "VIGIL_API_KEYS": json.dumps(
            [{"name": "deploy-test", "key": api_key, "roles": ["score", "read", "admin"]}]
        ),
    }
    output = directory / "stack.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable, str(ROOT / "deploy" / "stack.py"), "--models-dir", str(models_dir),
                "--redis-url", redis_url, "--port", str(vigil_port),
                "--prometheus-port", str(prometheus_port), "--scrape-interval", "1s",
                "--alertmanager-port", str(alertmanager_port),
                "--state-dir", str(directory / "state"), "--replay",
                "--replay-data", str(spiked_series(directory / "spiked.npy")),
                "--replay-rate", str(RATE_POINTS_PER_S), "--replay-chunk", str(CHUNK),
                "--replay-stream-id", stream_id, "--replay-api-key", api_key,
            ],
            stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    stack = LiveStack(
        proc, output, f"http://127.0.0.1:{vigil_port}", vigil_port, f"http://127.0.0.1:{prometheus_port}",
        prometheus_port, api_key, stream_id, f"http://127.0.0.1:{alertmanager_port}", alertmanager_port,
    )  # fmt: skip
    try:
        stack.wait_for(
            "replayed points in Prometheus", lambda: total(stack, "sum(vigil_points_scored_total)") >= ROWS
        )
        send_bad_requests_and_a_retry(stack)
        stack.wait_for(
            "rejections in the recording rules",
            lambda: (
                total(
                    stack,
                    'reason:vigil_rejections:rate1m{reason=~"invalid_request|unknown_model|unknown_stream"}',
                )
                > 0
                and total(stack, 'sum(vigil_points_dropped_total{reason="duplicate"})') >= CHUNK
            ),
            timeout_s=30,
        )
        yield stack
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: the stack and every child it started
                proc.wait()


def send_bad_requests_and_a_retry(stack: LiveStack) -> None:
    """Rejections of three reasons, and the last chunk sent again (duplicates, as a client retry would)."""
    series = np.load(Path(stack.output.parent / "spiked.npy"))
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.vigil_url, headers=headers, timeout=10) as client:
        bad_width = client.post(
            "/score", json={"stream_id": stack.stream_id, "points": [{"ts": 1e9, "values": [1.0]}]}
        )
        assert bad_width.status_code == 422 and bad_width.json()["code"] == "invalid_request"
        point = {"ts": 1e9, "values": series[0].tolist()}
        unknown = client.post(
            "/score", json={"stream_id": stack.stream_id, "model": "nope", "points": [point]}
        )
        assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_model"
        missing = client.get("/streams/never-seen-stream")
        assert missing.status_code == 404 and missing.json()["code"] == "unknown_stream"
        retry = [
            {"ts": float(ROWS - CHUNK + i), "values": row.tolist()} for i, row in enumerate(series[-CHUNK:])
        ]
        again = client.post("/score", json={"stream_id": stack.stream_id, "points": retry})
        assert again.status_code == 200, again.text
        assert [d["reason"] for d in again.json()["dropped"]] == ["duplicate"] * CHUNK


def check_expressions(stack: LiveStack, named: list[tuple[str, str]], timeout_s: float = 15) -> list[str]:
    """Names of the expressions that still return no finite sample after ``timeout_s`` (rules evaluate every
    second, so a series may appear a moment after its inputs)."""
    deadline = time.monotonic() + timeout_s
    failing = named
    while True:
        failing = [(name, expr) for name, expr in failing if not finite_values(stack.query(expr))]
        if not failing or time.monotonic() > deadline:
            return [f"{name}: {expr}" for name, expr in failing]
        time.sleep(0.5)


def test_every_dashboard_query_returns_data(live_stack: LiveStack) -> None:
    sourced = row_queries(SOURCE_ROW)  # need a source-backed model: tests/sources/test_poller.py runs them
    queries = [query for query in dashboard_queries() if query not in sourced]
    assert len(queries) >= 20
    empty = check_expressions(live_stack, queries)
    assert not empty, "panels that would show no data:\n" + "\n".join(empty)


def test_every_recording_rule_returns_data(live_stack: LiveStack) -> None:
    recorded = [(rule["record"], rule["expr"]) for rule in rules("record")]
    empty = check_expressions(live_stack, recorded)
    assert not empty, "recording rules without data:\n" + "\n".join(empty)


def test_prometheus_loads_every_rule_and_evaluates_it_without_error(live_stack: LiveStack) -> None:
    groups = httpx.get(f"{live_stack.prometheus_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {rule["name"]: rule for group in groups for rule in group["rules"]}
    expected = {rule.get("record") or rule["alert"] for rule in rules("record") + rules("alert")}
    assert expected <= set(loaded), sorted(expected - set(loaded))
    broken = {name: rule.get("lastError") for name, rule in loaded.items() if rule["health"] != "ok"}
    assert not broken
    firing = [name for name, rule in loaded.items() if rule.get("state") == "firing"]
    assert not firing, f"a healthy service fires {firing}"


def test_alert_rules_select_series_that_exist(live_stack: LiveStack) -> None:
    """Every series an alert selects exists (conditions aside): a misspelt metric or label value would make an
    alert that can never fire, which promtool's synthetic tests cannot notice."""
    missing = []
    for rule in rules("alert"):
        for name, matchers in SELECTOR.findall(rule["expr"]):
            kept = []
            for label, op, value in MATCHER.findall(matchers):
                if op == "=":
                    kept.append(f'{label}="{value}"')
                elif op == "=~":
                    kept.append(
                        f'{label}=~".+"'
                    )  # the label exists; which values match is the rule's business
            selector = f"{name}{{{', '.join(kept)}}}"
            if not live_stack.query(f"count({selector})"):
                missing.append(f"{rule['alert']}: {selector}")
    assert not missing, "alerts selecting nothing:\n" + "\n".join(missing)


def test_live_numbers_show_the_replayed_spike_and_the_bad_requests(live_stack: LiveStack) -> None:
    stack = live_stack
    assert total(stack, "model:vigil_points_scored:rate1m") > 0
    assert total(stack, 'model_level:vigil_scores_above_level:rate1m{level="critical"}') > 0
    assert total(stack, 'sum(vigil_alert_transitions_total{state="firing", severity="critical"})') >= 1
    for reason in ("invalid_request", "unknown_model", "unknown_stream"):
        assert total(stack, f'sum(vigil_rejections_total{{reason="{reason}"}})') >= 1, reason
    assert total(stack, 'sum(vigil_points_dropped_total{reason="duplicate"})') == CHUNK
    (provider,) = stack.query("count by (provider) (vigil_model_info)")
    assert provider["metric"]["provider"] == "cpu"


def alerts_received(stack: LiveStack, status: str) -> float:
    """Alerts Alertmanager received through its v2 API, from its own metrics."""
    text = httpx.get(f"{stack.alertmanager_url}/metrics", timeout=10).text
    pattern = rf'^alertmanager_alerts_received_total{{status="{status}",version="v2"}} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, text, flags=re.M))


def test_vigil_delivers_the_replayed_anomaly_to_alertmanager_and_prometheus_points_there(
    live_stack: LiveStack,
) -> None:
    stack = live_stack
    stack.wait_for(
        "the replayed anomaly accepted by Alertmanager, nothing waiting",
        lambda: (
            alerts_received(stack, "firing") >= 1
            and total(stack, 'sum(vigil_alert_deliveries_total{outcome="delivered"})') >= 1
            and total(stack, "sum(vigil_alert_delivery_pending_events)") == 0
        ),
        timeout_s=30,
    )
    assert total(stack, 'sum(vigil_alertmanager_posts_total{outcome=~"failed|rejected"})') == 0
    assert total(stack, "sum(vigil_alert_delivery_leader)") == 1
    discovered = httpx.get(f"{stack.prometheus_url}/api/v1/alertmanagers", timeout=10).json()["data"]
    assert [a["url"] for a in discovered["activeAlertmanagers"]] == [
        f"{stack.alertmanager_url}/api/v2/alerts"
    ]


def test_dockerfile_healthcheck_command_passes_against_a_live_service(live_stack: LiveStack) -> None:
    (line,) = [
        line for line in DOCKERFILE.read_text().splitlines() if line.strip().startswith('CMD ["python"')
    ]
    argv = json.loads(line.strip()[len("CMD ") :])
    env = {**os.environ, "VIGIL_PORT": str(live_stack.vigil_port)}
    result = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=10)
    assert result.returncode == 0, result.stderr
    env["VIGIL_PORT"] = str(free_port())  # nothing listens there: unhealthy
    assert (
        subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=10).returncode != 0
    )


def test_stack_stops_every_child_on_ctrl_c(live_stack: LiveStack) -> None:
    """Last in this module: it stops the shared stack."""
    stack = live_stack
    output = stack.log(tail=None)
    assert "Vigil stack up" in output and f"replayed {ROWS} points" in output, output
    stack.proc.send_signal(signal.SIGINT)
    try:
        code = stack.proc.wait(90)  # each child gets its graceful period
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, stack.log()[-3000:]
    for port in (stack.vigil_port, stack.prometheus_port, stack.alertmanager_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, (
                f"port {port} still answers after the stack stopped"
            )
