"""``vigil serve``: settings from env and flags, a Redis to talk to, then uvicorn.

The Redis is ``VIGIL_REDIS_URL`` when set, else one answering on 127.0.0.1:6379, else (or with
``VIGIL_REDIS_URL=local``) a private ``redis-server`` that lives exactly as long as this process. A graceful
stop on SIGTERM or SIGINT exits 0.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlparse

import uvicorn
from fastapi import FastAPI
from prometheus_client import values as prometheus_values

from service.app import create_app
from service.auth import RedactTokens
from service.inference_server import InferenceProcess
from service.settings import Settings

log = logging.getLogger(__name__)


def redis_reachable(url: str, timeout_s: float = 0.5) -> bool:
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return Path(parsed.path).exists()
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout_s
        ) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ``VIGIL_REDIS_URL=local`` (or ``vigil serve --redis-url local``): always start a private redis-server, even
# when one answers on 127.0.0.1:6379.
LOCAL_REDIS = "local"

# The keeper of a private redis-server: a shell that starts it, then reads its stdin, the read end of a pipe
# whose write end only `vigil serve` holds. However Vigil ends (it returns, SIGTERM, SIGINT, a crash, SIGKILL)
# the kernel closes that pipe; the keeper then stops Redis with SIGTERM (Redis flushes its AOF and exits) and
# removes the data directory. It ignores the signals a terminal or a service manager sends, so Redis is still
# there while Vigil drains and goes after it. ``$1``: the data directory; then the redis-server command line.
# (PR_SET_PDEATHSIG on redis-server would stop it on a crash just as fast, but leave its directory behind.)
KEEPER_SH = """
trap '' HUP INT TERM
dir=$1
shift
"$@" </dev/null &
redis=$!
read -r _ || true
kill -TERM "$redis" 2>/dev/null
wait "$redis"
rm -rf -- "$dir"
"""


@dataclass
class LocalRedis:
    """A private ``redis-server`` (AOF on) on a free loopback port with a temporary data directory, held by a
    keeper process (``KEEPER_SH``) so that both go when this process does, on every exit path."""

    url: str
    port: int
    data_dir: Path
    keeper: subprocess.Popen[bytes]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop Redis and remove its data directory; returns once both are gone (or ``timeout_s`` passed)."""
        if self.keeper.stdin is not None and not self.keeper.stdin.closed:
            self.keeper.stdin.close()
        try:
            self.keeper.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning(
                "the private redis-server on port %d did not stop within %.0f s", self.port, timeout_s
            )


def start_local_redis(timeout_s: float = 5.0) -> LocalRedis:
    """Start a private ``redis-server`` (see :class:`LocalRedis`); raises ``RuntimeError`` when it cannot."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "no Redis reachable and no redis-server binary: install redis-server or set VIGIL_REDIS_URL"
        )
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="vigil-redis-"))
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
    ]
    keeper = subprocess.Popen(
        ["/bin/sh", "-c", KEEPER_SH, "vigil-redis-keeper", str(data_dir), *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # Ctrl-C in a terminal reaches Vigil, which drains, not its Redis
    )
    local = LocalRedis(f"redis://127.0.0.1:{port}/0", port, data_dir, keeper)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and keeper.poll() is None:
        if redis_reachable(local.url):
            log.info(
                "started a private redis-server on 127.0.0.1:%d (data in %s); it stops when Vigil does",
                port,
                data_dir,
            )
            return local
        time.sleep(0.05)
    local.stop()
    raise RuntimeError("the private redis-server did not start")


class Terminated(Exception):
    """SIGTERM arrived (systemd, Docker and Kubernetes stop a service with it). uvicorn drains and shuts down
    first, then re-raises the signal; :func:`run_server` turns it into this exception so that it can clean up
    and exit 0, the status a service manager expects from a clean stop (the default action would exit 143)."""


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signal.Signals(signum).name)


def redact_tokens_in_logs() -> None:
    """Access lines (``uvicorn.access``) and WebSocket handshake lines (``uvicorn.error``, at INFO and DEBUG)
    both print the query string, where the feed's token may travel."""
    for name in ("uvicorn.access", "uvicorn.error"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def app_from_environment() -> FastAPI:
    """uvicorn's factory for worker processes: every worker builds its settings from the environment (and
    installs its own log redaction: spawned workers do not inherit the parent's filters)."""
    redact_tokens_in_logs()
    return create_app(Settings())


def prepare_multiprocess_metrics() -> Path | None:
    """Several workers share metrics through files; stale files from an earlier run would double counters.

    prometheus_client chooses where a metric keeps its values (memory or these files) when it is imported,
    and it was imported before the directory existed; this process's metrics (created later, with the app)
    must write the files too, or a single API process beside the shared inference process exports only the
    inference process's metrics (its requests, latencies and loop lag were missing from ``/metrics``)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = Path(given or tempfile.mkdtemp(prefix="vigil-metrics-"))
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    prometheus_values.ValueClass = prometheus_values.get_value_class()  # type: ignore[no-untyped-call]
    return None if given else directory  # made here: the caller removes it when serving ends


def run_server(
    models_dir: Path | None,
    redis_url: str | None,
    host: str | None,
    port: int | None,
    workers: int | None = None,
) -> int:
    for name, value in (
        ("VIGIL_MODELS_DIR", models_dir),
        ("VIGIL_REDIS_URL", redis_url),
        ("VIGIL_HOST", host),
        ("VIGIL_PORT", port),
        ("VIGIL_WORKERS", workers),
    ):
        if value is not None:
            os.environ[name] = str(value)
    settings = Settings()  # validates the whole configuration before anything starts
    requested = os.environ.get("VIGIL_REDIS_URL")
    local_redis: LocalRedis | None = None
    if requested == LOCAL_REDIS or (requested is None and not redis_reachable(settings.redis_url)):
        local_redis = start_local_redis()
        os.environ["VIGIL_REDIS_URL"] = local_redis.url
        settings = Settings()
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return serve(settings)
    except Terminated:
        return 0
    finally:
        if local_redis is not None:
            local_redis.stop()


def serve(settings: Settings) -> int:
    """uvicorn with one process or ``settings.workers`` (and, with ``VIGIL_INFERENCE=shared``, the shared
    inference process under a supervisor), until it stops."""
    if settings.inference != "shared":
        return serve_http(settings)
    # the inference process's batch metrics join the API processes'
    metrics_dir = prepare_multiprocess_metrics()
    socket_path = Path(tempfile.mkdtemp(prefix="vigil-inference-")) / "inference.sock"
    inference = InferenceProcess(socket_path)
    try:
        inference.start()
        os.environ["VIGIL_INFERENCE_SOCKET"] = str(socket_path)
        return serve_http(Settings())
    finally:
        inference.stop()
        shutil.rmtree(socket_path.parent, ignore_errors=True)
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def serve_http(settings: Settings) -> int:
    """uvicorn with one process or ``settings.workers``, until it stops."""
    redact_tokens_in_logs()
    print(
        f"Vigil serving on http://{settings.host}:{settings.port} (models in {settings.models_dir})",
        flush=True,
    )
    if settings.workers > 1:
        made = None
        if "PROMETHEUS_MULTIPROC_DIR" not in os.environ or settings.inference != "shared":
            made = prepare_multiprocess_metrics()
        try:
            uvicorn.run(
                "service.server:app_from_environment",
                factory=True,
                host=settings.host,
                port=settings.port,
                workers=settings.workers,
                log_level=settings.log_level,
                timeout_graceful_shutdown=10,
                http="service.http_limits:HeadLimitedAuto",  # 431 over the header bounds (service/http_limits.py)
                h11_max_incomplete_event_size=settings.max_header_bytes,  # that module's byte bound, both parsers
            )
        finally:
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
        return 0
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        http="service.http_limits:HeadLimitedAuto",
        h11_max_incomplete_event_size=settings.max_header_bytes,
    )
    return 0
