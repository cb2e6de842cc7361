"""The shared inference process: one per device, batching the windows of every API process.

``vigil serve --workers N`` with ``VIGIL_INFERENCE=shared`` runs N API processes that send their windows over a
Unix socket (``service.inference_client``) to this process, which owns the ONNX Runtime sessions (the CUDA
provider's device on a GPU host, every core on a CPU host) and one MicroBatcher per model, so batches form across
all API processes. :class:`InferenceProcess` starts it and starts it again when it dies.

    python -m service.inference_server --socket PATH     # settings from the environment, as vigil serve
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from service.errors import InferenceFailed, VigilError
from service.gcpolicy import freeze_startup_objects
from service.inference_wire import (
    InferenceAnswer,
    InferenceRequest,
    decode_request,
    encode_answer,
    read_frame,
)
from service.metrics import Metrics
from service.redis_clients import redis_client
from service.registry import ModelRegistry
from service.reloads import follow as follow_reloads
from service.reloads import generation_before_load
from service.settings import Settings
from service.tasks import stop_task

log = logging.getLogger(__name__)


async def answer_requests(
    registry: ModelRegistry, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """One API process's connection: each request is submitted to its model's batcher as it arrives."""
    lock = asyncio.Lock()
    tasks: set[asyncio.Task[None]] = set()

    async def answer(request: InferenceRequest) -> None:
        try:
            scores = await registry.get(request.model).batcher.submit(request.windows)
            result = InferenceAnswer(request.id, scores)
        except VigilError as exc:
            result = InferenceAnswer(request.id, None, exc.code, exc.detail)
        except Exception as exc:  # noqa: BLE001 - every failure is answered, the connection lives on
            result = InferenceAnswer(
                request.id, None, InferenceFailed.code, f"inference failed: {type(exc).__name__}"
            )
        async with lock:
            writer.write(encode_answer(result))
            await writer.drain()

    try:
        while True:
            request = decode_request(await read_frame(reader))
            task = asyncio.create_task(answer(request))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve_inference(settings: Settings, socket_path: Path) -> None:
    registry = ModelRegistry(settings.model_copy(update={"inference": "in_process"}), Metrics())
    redis = redis_client(settings.model_copy(update={"redis_pool_size": 1}))
    generation = await generation_before_load(redis)
    registry.load_all()
    socket_path.unlink(missing_ok=True)
    server = await asyncio.start_unix_server(
        lambda r, w: answer_requests(registry, r, w), path=str(socket_path), limit=1 << 20
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if settings.gc_freeze:
        freeze_startup_objects()
    log.info(
        "inference process %d serving %s on %s", os.getpid(), [h.name for h in registry.all()], socket_path
    )
    watcher = asyncio.create_task(_stop_when_orphaned(stop))
    reloads = asyncio.create_task(follow_reloads(redis, registry, generation))  # reloads others answered
    try:
        await stop.wait()
    finally:
        watcher.cancel()
        await stop_task(reloads, 2.0, "model reloads")
        await redis.aclose()
        server.close()
        await server.wait_closed()
        registry.close()
        socket_path.unlink(missing_ok=True)


async def _stop_when_orphaned(stop: asyncio.Event, every_s: float = 0.5) -> None:
    """Stop when the process that started this one is gone (SIGKILLed, crashed): its own session, which keeps
    a Ctrl-C or a group SIGTERM from reaching it before the API processes have drained (``InferenceProcess``),
    also keeps their death from reaching it, and an orphan would hold the models (a GPU's memory) for good."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(every_s)
    log.warning("inference process %d: its parent %d is gone; stopping", os.getpid(), parent)
    stop.set()


class InferenceProcess:
    """Runs ``python -m service.inference_server`` and starts it again whenever it ends, until :meth:`stop`."""

    # A process that ended within STABLE_S of its start waits twice as long as the last one before it is started
    # again, up to MAX_PAUSE_S: one that cannot start (a bundle it cannot load, a device it cannot open) would
    # otherwise load Python and ONNX Runtime five times a second on cores the API processes need. A run of at
    # least STABLE_S (a crash under load, a kill) restarts after the first pause again.
    STABLE_S = 10.0
    MAX_PAUSE_S = 30.0

    def __init__(self, socket_path: Path, restart_pause_s: float = 0.2) -> None:
        self.socket_path = socket_path
        self._first_pause_s = restart_pause_s
        self._short_runs = 0  # runs in a row that ended within STABLE_S
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._spawning = threading.Lock()  # a restart and stop() never interleave
        self._watcher = threading.Thread(target=self._watch, name="inference-supervisor", daemon=True)
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, ready_timeout_s: float = 120.0) -> None:
        self._spawn()
        deadline = time.monotonic() + ready_timeout_s
        while not self.socket_path.exists():
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError("the inference process exited at start")
            if time.monotonic() > deadline:
                raise RuntimeError("the inference process did not start")
            time.sleep(0.05)
        self._watcher.start()

    def _spawn(self) -> None:
        # A session of its own: a signal to the whole process group (Ctrl-C, a service manager's stop) must not
        # stop it while the API processes still drain accepted requests; stop() ends it after them, and it ends
        # itself if this process dies (_stop_when_orphaned).
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "service.inference_server", "--socket", str(self.socket_path)],
            start_new_session=True,
        )

    def next_pause_s(self, ran_s: float) -> float:
        """The pause before starting again a process that ended after ``ran_s`` seconds: the first pause after a
        stable run, doubled for each short run in a row since, at most ``MAX_PAUSE_S``."""
        self._short_runs = self._short_runs + 1 if ran_s < self.STABLE_S else 1
        doublings = min(self._short_runs - 1, 64)  # 2.0 ** 1024 would overflow after hours of short runs
        return float(min(self.MAX_PAUSE_S, self._first_pause_s * 2.0**doublings))

    def _watch(self) -> None:
        started = time.monotonic()
        while not self._stopping.is_set():
            assert self._proc is not None
            code = self._proc.wait()
            if self._stopping.is_set():
                return
            ran = time.monotonic() - started
            pause = self.next_pause_s(ran)
            log.error(
                "the inference process ended (status %s) after %.1f s; starting it again in %.1f s",
                code,
                ran,
                pause,
            )
            if self._stopping.wait(pause):  # stop() during the pause ends it at once
                return
            started = time.monotonic()
            with self._spawning:
                if self._stopping.is_set():  # stop() came during the pause
                    return
                self.restarts += 1
                self._spawn()

    def stop(self, timeout_s: float = 15.0) -> None:
        with self._spawning:
            self._stopping.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description="Vigil's shared inference process")
    parser.add_argument("--socket", type=Path, required=True)
    args = parser.parse_args()
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(serve_inference(settings, args.socket))
    return 0


if __name__ == "__main__":
    sys.exit(main())
