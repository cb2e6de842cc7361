"""``vigil serve``: settings from env and flags, a Redis to talk to, then uvicorn."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import uvicorn
from fastapi import FastAPI

from service.app import create_app
from service.auth import RedactTokens
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


def start_local_redis() -> str:
    """Start a private ``redis-server`` (AOF on) on a free loopback port; stopped when this process exits."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "no Redis reachable and no redis-server binary: install redis-server or set VIGIL_REDIS_URL"
        )
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="vigil-redis-"))
    proc = subprocess.Popen(
        [
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
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(proc.terminate)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if redis_reachable(url):
            log.info("started a local redis-server on port %d (data in %s)", port, data_dir)
            return url
        time.sleep(0.05)
    raise RuntimeError("local redis-server did not start")


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


def prepare_multiprocess_metrics() -> None:
    """Several workers share metrics through files; stale files from an earlier run would double counters."""
    directory = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="vigil-metrics-"))
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)


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
    if "VIGIL_REDIS_URL" not in os.environ and not redis_reachable(settings.redis_url):
        os.environ["VIGIL_REDIS_URL"] = start_local_redis()
        settings = Settings()
    redact_tokens_in_logs()
    print(
        f"Vigil serving on http://{settings.host}:{settings.port} (models in {settings.models_dir})",
        flush=True,
    )
    if settings.workers > 1:
        prepare_multiprocess_metrics()
        uvicorn.run(
            "service.server:app_from_environment",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            timeout_graceful_shutdown=10,
        )
        return 0
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
    return 0
