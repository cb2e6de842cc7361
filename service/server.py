"""``vigil serve``: settings from env and flags, a Redis to talk to, then uvicorn."""

from __future__ import annotations

import atexit
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import uvicorn

from service.app import create_app
from service.settings import Settings

log = logging.getLogger(__name__)


def redis_reachable(url: str, timeout_s: float = 0.5) -> bool:
    parsed = urlparse(url)
    if parsed.scheme == "unix":
        return Path(parsed.path).exists()
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout_s) as sock:
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
        raise RuntimeError("no Redis reachable and no redis-server binary: install redis-server or set VIGIL_REDIS_URL")
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="vigil-redis-"))
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir), "--save", "",
         "--appendonly", "yes", "--appendfsync", "everysec"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    atexit.register(proc.terminate)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        if redis_reachable(url):
            log.info("started a local redis-server on port %d (data in %s)", port, data_dir)
            return url
        time.sleep(0.05)
    raise RuntimeError("local redis-server did not start")


def run_server(models_dir: Path | None, redis_url: str | None, host: str | None, port: int | None) -> int:
    overrides: dict[str, object] = {}
    if models_dir is not None:
        overrides["models_dir"] = models_dir
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if redis_url is not None:
        overrides["redis_url"] = redis_url
    settings = Settings(**overrides)  # type: ignore[arg-type]
    configured = redis_url is not None or "VIGIL_REDIS_URL" in __import__("os").environ
    if not configured and not redis_reachable(settings.redis_url):
        settings = settings.model_copy(update={"redis_url": start_local_redis()})
    print(f"Vigil serving on http://{settings.host}:{settings.port} (models in {settings.models_dir})", flush=True)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
    )
    return 0
