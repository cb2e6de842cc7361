"""Request heads over the bounds (service/http_limits.py) get 431 at once and the connection closes, with either
HTTP parser, while health checks stay fast; heads within the bounds, one after another on a keep-alive
connection, are all served."""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.http_limits import HeadBudget
from tests.service.conftest import auth
from tests.service.live import LiveServer

MIB = 1024 * 1024


class UvicornServer(LiveServer):
    """The app factory under ``uvicorn`` with a chosen protocol class (``vigil serve`` always takes the
    httptools one): how the h11 parser is served for real."""

    def __init__(self, http: str, models_dir: Path, redis_url: str, log_path: Path) -> None:
        super().__init__(models_dir, redis_url, log_path)
        self.http = http

    def start(self, timeout_s: float = 60) -> LiveServer:
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "service.server:app_from_environment",
            "--port",
            str(self.port),
            "--http",
            self.http,
            "--log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(
            command, env=self.env, stdout=self.log_path.open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("uvicorn did not become ready")


@pytest.fixture(params=["httptools", "h11"])
def server(
    request: pytest.FixtureRequest,
    live_server: Callable[..., LiveServer],
    models_dir: Path,
    redis_url: str,
    clean_redis: redis.Redis,
    tmp_path: Path,
) -> Iterator[LiveServer]:
    """``vigil serve`` (httptools), or the same app under uvicorn with the h11 protocol class."""
    if request.param == "httptools":
        yield live_server(redis_url, VIGIL_LOG_LEVEL="warning")
        return
    h11_server = UvicornServer(
        "service.http_limits:HeadLimitedH11", models_dir, redis_url, tmp_path / "uvicorn.log"
    )
    h11_server.start()
    try:
        yield h11_server
    finally:
        h11_server.terminate(20)


def read_response(sock: socket.socket, timeout_s: float) -> tuple[int, dict[str, str], bytes]:
    """One response (status, headers, body by Content-Length) read from ``sock``; (0, {}, b"") when the
    server sent nothing before ``timeout_s`` or closed first."""
    sock.settimeout(timeout_s)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return 0, {}, b""
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    except (TimeoutError, ConnectionResetError):
        return 0, {}, b""
    return int(lines[0].split()[1]), headers, body


def send_until_answered(sock: socket.socket, start: bytes, blocks: int) -> int:
    """Sends ``start`` then up to ``blocks`` MiB of ``a`` (a header value that never ends), a block at a time
    while no answer is readable, and returns the bytes of value sent. Sending stops once the server has
    answered (or closed): what a client had sent by then, counted without racing a second thread (the test
    once raced a sender thread against the reader and counted what the sender pushed in the meantime into
    the 2 s the server lingers, reading and dropping)."""
    sock.settimeout(5)  # a server that stops reading without closing fails the test, not hangs it
    sock.sendall(start)
    block = b"a" * MIB
    sent = 0
    try:
        for _ in range(blocks):
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            sock.sendall(block)
            sent += len(block)
    except OSError:
        pass  # the server closed: what is left is never sent
    return sent


def healthz_latencies(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/healthz")
            out.append(time.perf_counter() - started)
            time.sleep(0.02)


def test_a_128_mib_header_gets_431_at_once_and_health_stays_fast(
    server: LiveServer, figures: Callable[..., None]
) -> None:
    """The hostile client's repro: ``X-Big:`` followed by 128 MiB of ``a``. Before the bound, httptools
    took 22 s to join the value (quadratic) and /healthz waited up to 6.9 s meanwhile."""
    latencies: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=healthz_latencies, args=(server.url, stop, latencies))
    prober.start()
    time.sleep(0.3)
    sock = socket.create_connection(("127.0.0.1", server.port))
    started = time.perf_counter()
    sent = send_until_answered(sock, b"GET /models HTTP/1.1\r\nHost: x\r\nX-Big: ", 128)
    status, headers, body = read_response(sock, timeout_s=15)
    answered_s = time.perf_counter() - started
    sock.close()
    time.sleep(0.3)
    stop.set()
    prober.join(60)
    figures(
        answered_s=round(answered_s, 2),
        status=status,
        mib_sent_before_answer=round(sent / MIB, 1),
        healthz_max_ms=round(max(latencies) * 1000, 1),
        healthz_probes=len(latencies),
    )
    assert status == 431, (status, headers, body[:200])
    assert json.loads(body)["code"] == "headers_too_large" and headers["connection"] == "close"
    assert answered_s < 3.0
    assert sent < 16 * MIB  # refused early, long before the head could end
    assert max(latencies) < 1.0


def test_header_bounds_are_exact_and_per_request_on_a_keep_alive_connection(server: LiveServer) -> None:
    """100 headers and a 31 KiB head pass, three times in a row on one connection (each request has its own
    budget); 101 headers, or a head over 32 KiB, get 431 and the connection closes."""
    key = auth("reader")["Authorization"]

    def head(extra: list[str]) -> bytes:
        lines = ["GET /models HTTP/1.1", "Host: x", f"Authorization: {key}", *extra]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    hundred = [f"X-H{i}: v" for i in range(97)]  # with Host and Authorization: 99, then one more
    big_value = ["X-Big: " + "a" * (31 * 1024)]
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        for request in (head([*hundred, "X-Last: v"]), head(big_value), head(big_value)):
            sock.sendall(request)
            status, _, _ = read_response(sock, timeout_s=10)
            assert status == 200
    for extra in ([*hundred, "X-Last: v", "X-One-Too-Many: v"], ["X-Big: " + "a" * (32 * 1024)]):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head(extra))
            status, headers, body = read_response(sock, timeout_s=10)
            assert status == 431 and json.loads(body)["code"] == "headers_too_large", (status, body)
            sock.settimeout(5)
            assert sock.recv(1) == b""  # closed after the answer


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"])
def test_the_head_budget_counts_the_head_and_stops_at_its_end_however_it_is_split(eol: bytes) -> None:
    """``HeadBudget.take`` over every split of one read into two: the bytes it counts are the head's, up to its
    blank line, whether the blank line is split across the reads or a body holding blank lines follows."""
    head = eol.join([b"POST /score HTTP/1.1", b"Host: x", b"Content-Length: 12", b"", b""])
    body = b"{\n\n\r\n\r\n}" + b"x" * 3
    data = head + body
    for cut in range(len(data) + 1):
        budget = HeadBudget(MIB, 100)
        taken = budget.take(data[:cut])
        if taken == cut and cut < len(head):
            taken += budget.take(data[cut:])
        assert taken == len(head), cut
        assert budget.n_bytes == len(head) and budget.n_lines == 4
