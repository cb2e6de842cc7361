"""A real Alertmanager (Debian's ``prometheus-alertmanager``) for the delivery tests, a webhook receiver for its
notifications, and a tap: a pass-through HTTP proxy between Vigil and Alertmanager that records every POST
and Alertmanager's answer (so tests count posts and measure lag), and can stop listening like a dead host.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import free_port

BINARY_HINT = "apt-get install -y prometheus-alertmanager (deploy/setup.sh does it)"


def alertmanager_binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if found is None:
        raise RuntimeError(f"prometheus-alertmanager is not installed: {BINARY_HINT}")
    return found


def config(receiver_url: str | None = None) -> dict[str, Any]:
    """Each alert its own group (labels that name it), notified a second after it changes."""
    route = {
        "receiver": "hook" if receiver_url else "null",
        "group_by": ["alertname", "stream", "severity"],
        "group_wait": "1s",
        "group_interval": "1s",
        "repeat_interval": "1h",
    }
    hook = {"name": "hook", "webhook_configs": [{"url": receiver_url, "send_resolved": True}]}
    return {"route": route, "receivers": [hook if receiver_url else {"name": "null"}]}


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = 30, step_s: float = 0.1) -> float:
    """Seconds it took ``check`` to hold; fails with ``what`` after ``timeout_s``."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(step_s)
    return time.monotonic() - started


class AlertmanagerProcess:
    """``prometheus-alertmanager`` on a free loopback port, gossip off; SIGKILL and restart on the same port."""

    def __init__(self, directory: Path, receiver_url: str | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "alertmanager.yml"
        self.config_path.write_text(yaml.safe_dump(config(receiver_url)))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self, timeout_s: float = 20) -> None:
        log = (self.directory / "alertmanager.log").open("ab")
        self.proc = subprocess.Popen(
            [
                alertmanager_binary(),
                f"--config.file={self.config_path}",
                f"--storage.path={self.directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"alertmanager did not start: {self.log()[-2000:]}")
            time.sleep(0.05)

    def log(self) -> str:
        return (self.directory / "alertmanager.log").read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """Active (and silenced, inhibited) alerts; resolved ones are not listed by Alertmanager."""
        params = [("filter", f'{name}="{value}"') for name, value in filters.items()]
        response = httpx.get(f"{self.url}/api/v2/alerts", params=params, timeout=5)
        response.raise_for_status()
        alerts: list[dict[str, Any]] = response.json()
        return alerts

    def silence(self, minutes: float = 30, **labels: str) -> str:
        now = time.time()
        body = {
            "matchers": [
                {"name": k, "value": v, "isRegex": False, "isEqual": True} for k, v in labels.items()
            ],
            "startsAt": rfc3339(now - 1),
            "endsAt": rfc3339(now + minutes * 60),
            "createdBy": "vigil tests",
            "comment": "silenced by a test",
        }
        response = httpx.post(f"{self.url}/api/v2/silences", json=body, timeout=5)
        response.raise_for_status()
        return str(response.json()["silenceID"])


def rfc3339(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds % 1 * 1000):03d}Z"


def seconds(timestamp: str) -> float:
    """An RFC 3339 time as Alertmanager writes it (``.000Z`` in its API, Go's shortest form in webhooks)."""
    return datetime.fromisoformat(timestamp).timestamp()


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class WebhookReceiver:
    """Records the JSON bodies Alertmanager's webhook notifier posts."""

    def __init__(self) -> None:
        self.notifications: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.notifications.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert of every notification, in order received."""
        with self.lock:
            return [alert for note in self.notifications for alert in note["alerts"]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Post:
    """One POST that reached the tap: when it arrived and was answered, its alerts, Alertmanager's status
    (None when Alertmanager could not be reached: the tap then answered 502)."""

    started: float
    finished: float
    alerts: list[dict[str, Any]]
    status: int | None

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class AlertmanagerTap:
    """Forwards requests to ``upstream`` after ``delay_s``, recording each POST; ``down()`` stops listening
    (connections are refused, as for a dead host) and ``up()`` listens again on the same port."""

    def __init__(self, upstream: str, delay_s: float = 0.0) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.posts: list[Post] = []
        self.in_flight = 0
        self.lock = threading.Lock()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: _Server | None = None
        self.up()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        tap = self

        class Handler(BaseHTTPRequestHandler):  # HTTP/1.0: one request a connection, so down() refuses all
            def do_POST(self) -> None:  # noqa: N802
                started = time.time()
                with tap.lock:
                    tap.in_flight += 1
                try:
                    body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    time.sleep(tap.delay_s)
                    status, answer = tap.forward("POST", self.path, body)
                    with tap.lock:
                        tap.posts.append(Post(started, time.time(), json.loads(body), status))
                    self.send_response(status or 502)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                finally:
                    with tap.lock:
                        tap.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def forward(self, method: str, path: str, body: bytes) -> tuple[int | None, bytes]:
        request = urllib.request.Request(
            self.upstream + path, data=body, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (urllib.error.URLError, OSError):
            return None, b'{"error": "upstream unreachable"}'

    def up(self) -> None:
        self.server = _Server(("127.0.0.1", self.port), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def accepted(self) -> list[Post]:
        with self.lock:
            return [post for post in self.posts if post.accepted]
