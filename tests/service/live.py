"""A real `vigil serve` process for tests that need signals, workers or a socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.service.conftest import KEYS


class LiveServer:
    def __init__(self, models_dir: Path, redis_url: str, log_path: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        keys = [{"name": n, "key": k, "roles": r} for n, (k, r) in KEYS.items()]
        self.env = {
            **os.environ,
            "VIGIL_MODELS_DIR": str(models_dir),
            "VIGIL_REDIS_URL": redis_url,
            "VIGIL_PORT": str(self.port),
            "VIGIL_PROVIDER": "cpu",
            "VIGIL_INTRA_OP_THREADS": "1",
            "VIGIL_API_KEYS": json.dumps(keys),
            **env,
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 60) -> LiveServer:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vigil serve exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("vigil serve did not become ready")

    def terminate(self, timeout_s: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
