"""The live view end to end: ``vigil serve`` in a subprocess, the page in headless Chromium (Debian's
``chromium`` driven by Playwright's client), a stream replayed with an anomaly injected on one sensor.

The page opens and connects first, so the alert reaches it live over the WebSocket; then a reload checks that
the key and the chosen stream survive and that the feed catches up from Redis. A screenshot is saved under the
test's tmp_path (and, with VIGIL_UPDATE_SCREENSHOT=1, to docs/live-view.png for the README).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from service.settings import Settings
from tests.conftest import ROOT, SAMPLE, free_port
from training.data import load_series

STREAM_ID = "machine-1-2"
ROWS = 400  # window 100, stride 10: every row is scored and the last window still holds the anomaly
ANOMALY, SENSOR, SENSOR_NAME = slice(300, 331), 17, "sensor_18"
CHUNK = 50
WAIT_MS = 20_000
SCREENSHOT = ROOT / "docs" / "live-view.png"
# Debian's chromium in this sandbox: no sandboxing, no GPU, and none of its background connections.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
INSTALL_HINT = "apt-get install -y chromium and .venv/bin/pip install playwright (deploy/setup.sh does both)"


@dataclass
class Server:
    url: str
    read_key: str
    score_key: str
    proc: subprocess.Popen[bytes]
    log: Path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
def server(models_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path) -> Iterator[Server]:
    """``vigil serve`` with a read key (the page's) and a score key (the replay's)."""
    vigil = Path(sys.executable).with_name("vigil")
    if not vigil.is_file():
        pytest.fail(f"{vigil} missing: .venv/bin/pip install -e . (deploy/setup.sh)")
    port = free_port()
    read_key, score_key = secrets.token_hex(16), secrets.token_hex(16)
    env = {
        **os.environ,
        "VIGIL_MODELS_DIR": str(models_dir),
        "VIGIL_REDIS_URL": redis_url,
        "VIGIL_HOST": "127.0.0.1",
        "VIGIL_PORT": str(port),
        "VIGIL_PROVIDER": "cpu",
        "VIGIL_INTRA_OP_THREADS": "1",
        "VIGIL_LOG_LEVEL": "warning",
        "VIGIL_API_KEYS": json.dumps(
            [
                {"name": "viewer", "key": read_key, "roles": ["read"]},
                {"name": "replayer", "key": score_key, "roles": ["score"]},
            ]
        ),
    }
    log = tmp_path / "vigil.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [str(vigil), "serve"], stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", read_key, score_key, proc, log)
    try:
        deadline = time.monotonic() + 60
        while not _ready(server.url):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"vigil serve did not become ready:\n{server.log_tail()}")
            time.sleep(0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    return False


@pytest.fixture
def browser_page() -> Iterator[tuple[Any, list[str]]]:
    """A page in headless Chromium (its own fresh profile), and the errors its console reports."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail(f"chromium not found: {INSTALL_HINT}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright not installed: {INSTALL_HINT}")
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(WAIT_MS)
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            yield page, errors
        finally:
            browser.close()


def replay_with_anomaly(server: Server) -> list[dict[str, Any]]:
    """POST the first ROWS rows of the sample's test part, SENSOR raised by 3 over ANOMALY; returns alerts."""
    series = load_series(SAMPLE / "test.txt.gz", max_rows=ROWS)
    series[ANOMALY, SENSOR] += 3.0
    events: list[dict[str, Any]] = []
    headers = {"Authorization": f"Bearer {server.score_key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
        for start in range(0, ROWS, CHUNK):
            rows = series[start : start + CHUNK]
            points = [{"ts": float(start + i), "values": r.tolist()} for i, r in enumerate(rows)]
            response = client.post("/score", json={"stream_id": STREAM_ID, "points": points})
            assert response.status_code == 200, response.text
            events.extend(response.json()["alerts"])
    return events


def test_live_view_shows_the_stream_its_scores_the_alert_and_the_injected_sensor(
    server: Server,
    browser_page: tuple[Any, list[str]],
    tmp_path: Path,
    record_property: Any,
) -> None:
    page, errors = browser_page
    try:
        page.goto(f"{server.url}/ui")
        page.fill("#key-input", server.read_key)
        page.click("#key-form button[type=submit]")
        page.wait_for_selector('#feed-status[data-state="live"]')

        events = replay_with_anomaly(server)
        # The tiny model also fires on a few natural spikes of the sample; the injected one starts in ANOMALY.
        fired = [
            e
            for e in events
            if e["state"] == "firing" and ANOMALY.start - 5 <= e["started_ts"] < ANOMALY.stop
        ]
        assert fired and fired[0]["sensors"][0] == SENSOR_NAME, (
            f"{SENSOR_NAME} must drive the alert: {events}"
        )
        # Waits use selectors, not wait_for_function: the page's CSP forbids the eval that one needs.
        # Selected after the replay: the chart starts from the stream's kept history (VIGIL_HISTORY_POINTS).
        kept = min(ROWS, Settings.model_fields["history_points"].default)
        chart_drawn = f'#score-chart[data-points="{kept}"] canvas'
        feed_item = f'#feed li[data-id="{fired[0]["id"]}"][data-state="firing"][data-stream-id="{STREAM_ID}"]'

        page.wait_for_selector(f'#streams tr[data-stream-id="{STREAM_ID}"] .badge[data-state="firing"]')
        page.click(f'#streams tr[data-stream-id="{STREAM_ID}"] button')
        page.wait_for_selector(chart_drawn)
        assert SENSOR_NAME in page.wait_for_selector(feed_item).text_content()
        page.wait_for_selector(f'#contributions li:first-child[data-sensor="{SENSOR_NAME}"]')
        page.wait_for_selector(f'#sensor-charts .sensor-chart[data-sensor="{SENSOR_NAME}"] canvas')
        shot = tmp_path / "live-view.png"
        page.screenshot(path=str(shot), full_page=True)
        record_property("screenshot", str(shot))
        if os.environ.get("VIGIL_UPDATE_SCREENSHOT") == "1":
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT)

        # A reload keeps the key (sessionStorage) and the stream (URL, ?stream=<id> as in the links Alertmanager
        # notifications carry); the feed catches up from Redis.
        assert page.url == f"{server.url}/ui?stream={STREAM_ID}"
        page.reload()
        page.wait_for_selector(feed_item)
        page.wait_for_selector(chart_drawn)
        assert page.text_content("#stream-title") == STREAM_ID
        assert page.evaluate("sessionStorage.getItem('vigil.readKey')") == server.read_key

        # While the page is open its chart keeps what it has seen: 20 more points join the kept history.
        more = load_series(SAMPLE / "test.txt.gz", max_rows=ROWS + 20)[ROWS:]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            body = {
                "stream_id": STREAM_ID,
                "points": [{"ts": float(ROWS + i), "values": r.tolist()} for i, r in enumerate(more)],
            }
            response = client.post(
                "/score", json=body, headers={"Authorization": f"Bearer {server.score_key}"}
            )
            assert response.status_code == 200 and len(response.json()["scores"]) == 20, response.text
        page.wait_for_selector(f'#score-chart[data-points="{kept + 20}"] canvas')
    except Exception:
        page.screenshot(path=str(tmp_path / "failure.png"))
        print(f"failure screenshot: {tmp_path / 'failure.png'}\nconsole: {errors}\n{server.log_tail()}")  # noqa: T201
        raise
    assert errors == [], f"the page logged errors: {errors}"
