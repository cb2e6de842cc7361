"""deploy/nginx/vigil.conf, the reverse proxy of the compose ``proxy`` profile: accepted by a real nginx
(``nginx -t``), its limits in step with Vigil's own, and a real nginx with it in front of a real ``vigil serve``:
an oversized head or body and a flood are refused by nginx before Vigil sees them, in Vigil's error format,
while a normal ``POST /score`` and the alert feed's WebSocket pass and X-Forwarded-For is the client's address.
"""

from __future__ import annotations

import inspect
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
import uvicorn

from service.settings import Settings
from tests.conftest import SAMPLE, free_port
from tests.deploy.conftest import DEPLOY
from tests.service.conftest import KEYS, auth, points_body
from tests.service.live import LiveServer
from training.data import load_series

NGINX_CONF = DEPLOY / "nginx" / "vigil.conf"
UPSTREAM = "server vigil:8000"  # the compose service name does not resolve here
LISTEN = "listen 8080;"
MiB = 1024 * 1024


@pytest.fixture(scope="session")
def nginx_binary() -> Path:
    # Debian installs nginx in /usr/sbin, on root's PATH only.
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    if found is None:
        pytest.fail(
            "nginx not found: apt-get install -y nginx-light (deploy/setup.sh does when it is missing)"
        )
    return Path(found)


def directive(name: str) -> list[str]:
    """The arguments of the one ``name`` directive in vigil.conf."""
    (found,) = re.findall(rf"^\s*{name}\s+([^;]+);", NGINX_CONF.read_text(), re.M)
    return found.split()


def size_bytes(value: str) -> int:
    units = {"k": 1024, "m": MiB}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


def seconds(value: str) -> float:
    return float(value.removesuffix("s"))


def main_config(tmp: Path, upstream_port: int, listen_port: int) -> Path:
    """An nginx main config that gives vigil.conf the ``http`` context (as the official image does for
    conf.d), with only its upstream address and listen port replaced."""
    text = NGINX_CONF.read_text()
    assert text.count(UPSTREAM) == 1 and text.count(LISTEN) == 1
    site = tmp / "vigil.conf"
    site.write_text(
        text.replace(UPSTREAM, f"server 127.0.0.1:{upstream_port}").replace(
            LISTEN, f"listen 127.0.0.1:{listen_port};"
        )
    )
    # As root, nginx's workers would run as nobody, who cannot enter the test's private temporary directory.
    user = "user root;" if os.geteuid() == 0 else ""
    temp_paths = "\n".join(
        f"    {kind}_temp_path {tmp}/{kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = tmp / "nginx.conf"
    main.write_text(
        f"""daemon off;
worker_processes 1;
{user}
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {tmp}/client_body;
{temp_paths}
    include {site};
}}
"""
    )
    return main


def nginx_command(binary: Path, config: Path) -> list[str]:
    return [str(binary), "-p", str(config.parent), "-e", str(config.parent / "error.log"), "-c", str(config)]


def test_nginx_accepts_the_config(nginx_binary: Path, tmp_path: Path) -> None:
    config = main_config(tmp_path, free_port(), free_port())
    result = subprocess.run(
        [*nginx_command(nginx_binary, config), "-t"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_nginx_limits_are_in_step_with_vigils_own() -> None:
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    # A body Vigil accepts passes the proxy; one it would refuse is refused by the proxy already.
    assert size_bytes(directive("client_max_body_size")[0]) == defaults["max_body_bytes"]
    # The whole head (4 buffers) within Vigil's head bound, so the proxy refuses first.
    count, size = directive("large_client_header_buffers")
    assert int(count) * size_bytes(size) <= defaults["max_header_bytes"]
    assert seconds(directive("client_body_timeout")[0]) <= defaults["body_timeout_s"]
    # nginx must drop an idle upstream connection before uvicorn does (else a request may meet a closing one).
    uvicorn_keep_alive_s = inspect.signature(uvicorn.run).parameters["timeout_keep_alive"].default
    (upstream_keepalive,) = re.findall(
        r"upstream vigil \{[^}]*keepalive_timeout\s+(\w+);", NGINX_CONF.read_text()
    )
    assert seconds(upstream_keepalive) < uvicorn_keep_alive_s
    (connections,) = directive("limit_conn")[1:]
    assert int(connections) <= defaults["max_inflight_requests"]


@dataclass
class Proxied:
    vigil: LiveServer
    url: str
    access_log: Path


@pytest.fixture
def proxied(
    nginx_binary: Path, models_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> Iterator[Proxied]:
    """A real ``vigil serve`` and a real nginx with vigil.conf in front of it."""
    vigil = LiveServer(models_dir, redis_url, tmp_path / "serve.log").start()
    port = free_port()
    config = main_config(tmp_path, vigil.port, port)
    access_log = tmp_path / "nginx.out"
    with access_log.open("wb") as out:
        nginx = subprocess.Popen(nginx_command(nginx_binary, config), stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if nginx.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {(tmp_path / 'error.log').read_text()}")
            time.sleep(0.05)
        yield Proxied(vigil, url, access_log)
    finally:
        nginx.terminate()
        nginx.wait(10)
        vigil.terminate(20)


def vigil_requests(vigil: LiveServer) -> dict[str, float]:
    """Requests Vigil itself counted so far, by their labels (its metrics, asked directly), /metrics aside."""
    text = httpx.get(f"{vigil.url}/metrics", timeout=10).text
    return {
        labels: float(value)
        for labels, value in re.findall(r"^vigil_requests_total\{(.*)\} (\S+)$", text, re.M)
        if 'route="/metrics"' not in labels
    }


def raw_exchange(url: str, head: bytes) -> bytes:
    """Send a request head (no body follows); the answer's head and its ``Content-Length`` body, if any."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < content_length(answer):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def content_length(answer: bytes) -> int:
    found = re.search(rb"\r\ncontent-length: (\d+)\r\n", answer.partition(b"\r\n\r\n")[0], re.I)
    return int(found.group(1)) if found else 0


def test_nginx_in_front_of_vigil_refuses_oversized_heads_and_bodies_and_passes_scoring(
    proxied: Proxied,
) -> None:
    # From 127.0.0.2 with a forged X-Forwarded-For: Vigil must log the address nginx saw.
    client = httpx.Client(
        base_url=proxied.url,
        headers=auth("all"),
        transport=httpx.HTTPTransport(local_address="127.0.0.2"),
        timeout=30,
    )
    scored = client.post(
        "/score",
        json=points_body("proxied", load_series(SAMPLE / "test.txt.gz", max_rows=120), 0),
        headers={"X-Forwarded-For": "203.0.113.9"},
    )
    assert scored.status_code == 200, scored.text
    assert len(scored.json()["scores"]) == 120
    # Vigil counts a request once it has answered it: wait for the count before taking it as the baseline.
    deadline = time.monotonic() + 5
    while not any('route="/score"' in labels for labels in vigil_requests(proxied.vigil)):
        assert time.monotonic() < deadline, "POST /score never counted"
        time.sleep(0.05)
    served = vigil_requests(proxied.vigil)

    # A body declared over Vigil's 16 MiB is refused at its head, before nginx reads any of it.
    too_large = raw_exchange(
        proxied.url,
        b"POST /score HTTP/1.1\r\nHost: vigil\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % (16 * MiB + 1),
    )
    assert too_large.startswith(b"HTTP/1.1 413") and b"\r\nServer: nginx\r\n" in too_large, too_large
    assert b'"code":"payload_too_large"' in too_large
    long_header = client.get("/models", headers={"X-Long": "a" * 9000})
    many_headers = client.get("/models", headers={f"X-Pad-{i}": "b" * 7000 for i in range(6)})
    for refused in (long_header, many_headers):
        assert refused.status_code == 431 and refused.json()["code"] == "headers_too_large"
    assert client.get("/metrics").status_code == 404  # Prometheus scrapes Vigil directly
    assert vigil_requests(proxied.vigil) == served, "the refused requests must not reach Vigil"

    # The alert feed's WebSocket handshake passes; the token in its query string is not in nginx's log.
    token = KEYS["reader"][0]
    upgraded = raw_exchange(
        proxied.url,
        f"GET /ws/alerts?token={token} HTTP/1.1\r\nHost: vigil\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode(),
    )
    assert upgraded.startswith(b"HTTP/1.1 101"), upgraded

    vigil_log = proxied.vigil.log_path.read_text()
    assert re.search(r'127\.0\.0\.2:\d+ - "POST /score HTTP/1\.1" 200', vigil_log), vigil_log[-2000:]
    assert "203.0.113.9" not in vigil_log
    deadline = time.monotonic() + 5
    while "/ws/alerts" not in proxied.access_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    access = proxied.access_log.read_text()
    assert '"GET /ws/alerts HTTP/1.1" 101' in access and token not in access


def test_nginx_refuses_a_flood_from_one_address_with_429_and_retry_after(proxied: Proxied) -> None:
    """Above 100 requests/s past a burst of 200, in Vigil's error format; the flood stops at the proxy."""
    client = httpx.Client(base_url=proxied.url, timeout=10)
    statuses: list[int] = []
    refused: httpx.Response | None = None
    while refused is None and len(statuses) < 5000:
        response = client.get("/healthz")
        statuses.append(response.status_code)
        if response.status_code == 429:
            refused = response
    assert refused is not None, f"no 429 in {len(statuses)} requests"
    assert set(statuses) == {200, 429} and statuses.count(200) >= 200  # the burst passed first
    assert refused.headers["retry-after"] == "1" and refused.json()["code"] == "too_many_requests"
