"""The shared inference process's supervision from the API side: a process that keeps ending at start is
started again ever more slowly (not five times a second), and requests waiting for an unreachable inference
process each fail within the connect timeout, however many queue for the connection."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from models.scoring import WindowScores
from service.errors import InferenceFailed
from service.inference_client import InferenceConnection
from service.inference_server import InferenceProcess


def test_short_runs_in_a_row_double_the_pause_and_a_stable_run_resets_it() -> None:
    supervisor = InferenceProcess(Path("/nonexistent.sock"), restart_pause_s=0.2)
    short = supervisor.STABLE_S / 2
    assert [supervisor.next_pause_s(short) for _ in range(4)] == [0.2, 0.4, 0.8, 1.6]
    assert supervisor.next_pause_s(supervisor.STABLE_S) == 0.2
    assert supervisor.next_pause_s(short) == 0.4
    assert max(supervisor.next_pause_s(short) for _ in range(20)) == supervisor.MAX_PAUSE_S
    # hours of a process that cannot start (30 s apart): the pause stays at its bound, the supervisor lives on
    assert {supervisor.next_pause_s(short) for _ in range(2000)} == {supervisor.MAX_PAUSE_S}


class EndsAtOnce(InferenceProcess):
    """Starts a real process that makes its socket path appear, then exits with status 3."""

    def _spawn(self) -> None:
        code = f"open({str(self.socket_path)!r}, 'w').close(); raise SystemExit(3)"
        self._proc = subprocess.Popen([sys.executable, "-c", code])


def test_a_process_that_keeps_ending_is_started_again_with_growing_pauses(tmp_path: Path) -> None:
    supervisor = EndsAtOnce(tmp_path / "inference.sock", restart_pause_s=0.2)
    supervisor.start()
    time.sleep(2.0)
    supervisor.stop()
    restarts = supervisor.restarts
    time.sleep(0.5)
    assert supervisor.restarts == restarts  # stop() ends the restarts, during a pause too
    # Pauses 0.2, 0.4, 0.8 s: three starts again in 2 s (a fixed 0.2 s pause: eight or more).
    assert 2 <= restarts <= 4


def test_requests_queued_for_an_unreachable_process_each_fail_within_the_connect_timeout(
    tmp_path: Path,
) -> None:
    async def run() -> tuple[list[WindowScores | BaseException], float]:
        connection = InferenceConnection(tmp_path / "absent.sock", connect_timeout_s=0.5)
        windows = np.zeros((1, 4, 2), dtype=np.float32)
        began = time.monotonic()
        results = await asyncio.gather(
            *(connection.request("tvnet", windows) for _ in range(6)), return_exceptions=True
        )
        return results, time.monotonic() - began

    results, took = asyncio.run(run())
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert "unreachable" in str(results[-1])
    # Six requests behind one lock: with a deadline each from when it got the lock, 6 x 0.5 s.
    assert took < 1.5, took
