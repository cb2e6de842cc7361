"""Client-side load for the fault tests: one thread per stream, each sending the next chunk of its series and
retrying the same chunk until it is acknowledged (200), as a careful client does.

Because the window store drops duplicate ts, a retried chunk never appends twice, so after any fault the
points a stream holds must equal the rows its client got through: each either accepted by a 200 response or
reported by one as a duplicate of an earlier attempt whose answer was lost. None lost, none doubled.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt

ANOMALY_SENSORS = [2, 9, 20]


def cyclic_series(base: npt.NDArray[np.floating], n_rows: int, period: int = 300) -> npt.NDArray[np.float64]:
    """``n_rows`` rows cycling through ``base``, with an injected anomaly (sensors 2, 9 and 20 up by 2) in
    rows 200-229 of every ``period``, so alerts fire and resolve as the stream goes on."""
    rows = np.asarray(base, dtype=np.float64)[np.arange(n_rows) % len(base)].copy()
    hot = (np.arange(n_rows) % period >= 200) & (np.arange(n_rows) % period < 230)
    rows[np.ix_(hot, ANOMALY_SENSORS)] += 2.0
    return rows


@dataclass
class StreamLog:
    stream_id: str
    acked_points: int = 0  # sum of ``accepted`` over 200 responses
    # Points a retry found already held: the earlier attempt's write landed although its answer was lost
    # (a 503 raised after Redis applied the call, or a broken connection).
    duplicates_on_retry: int = 0
    next_row: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)  # alert events returned in 200 responses
    scores: list[dict[str, Any]] = field(default_factory=list)  # point scores returned in 200 responses
    outcomes: Counter[str] = field(default_factory=Counter)  # "200", "503 store_unavailable", "ConnectError"
    latencies_s: list[float] = field(default_factory=list)  # of 200 responses
    retry_after_missing: int = 0  # 503 responses without Retry-After


class StreamLoad:
    """Closed-loop load from ``len(stream_ids)`` threads against ``base_url``; :meth:`stop` returns the logs."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        series: npt.NDArray[np.float64],
        stream_ids: list[str],
        chunk: int = 10,
        retry_pause_s: float = 0.05,
    ) -> None:
        self.base_url = base_url
        self.headers = headers
        self.series = series
        self.chunk = chunk
        self.retry_pause_s = retry_pause_s
        self.logs = {sid: StreamLog(sid) for sid in stream_ids}
        self.timeline: list[tuple[float, str, str]] = []  # (monotonic time, stream id, outcome)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(sid,), daemon=True) for sid in stream_ids]

    def start(self) -> StreamLoad:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> dict[str, StreamLog]:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        return self.logs

    def acked(self) -> dict[str, int]:
        return {sid: log.acked_points for sid, log in self.logs.items()}

    def wait_acked(self, points_per_stream: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while min(self.acked().values()) < points_per_stream:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"load did not reach {points_per_stream} points per stream: {self.acked()}"
                )
            time.sleep(0.02)

    def _body(self, stream_id: str, start: int) -> dict[str, Any]:
        rows = self.series[start : start + self.chunk]
        points = [{"ts": float(start + i), "values": row.tolist()} for i, row in enumerate(rows)]
        return {"stream_id": stream_id, "points": points}

    def _run(self, stream_id: str) -> None:
        log = self.logs[stream_id]
        with httpx.Client(base_url=self.base_url, headers=self.headers, timeout=30) as client:
            while not self._stop.is_set() and log.next_row + self.chunk <= len(self.series):
                started = time.perf_counter()
                try:
                    response = client.post("/score", json=self._body(stream_id, log.next_row))
                except httpx.TransportError as exc:
                    self._record(log, type(exc).__name__)
                    time.sleep(self.retry_pause_s)
                    continue
                if response.status_code != 200:
                    body = (
                        response.json() if response.headers.get("content-type") == "application/json" else {}
                    )
                    outcome = f"{response.status_code} {body.get('code', '?')}"
                    if response.status_code == 503 and "retry-after" not in response.headers:
                        log.retry_after_missing += 1
                    self._record(log, outcome)
                    time.sleep(
                        self.retry_pause_s
                    )  # a real client waits Retry-After; shorter keeps tests quick
                    continue
                body = response.json()
                log.latencies_s.append(time.perf_counter() - started)
                log.acked_points += body["accepted"]
                log.duplicates_on_retry += sum(1 for d in body["dropped"] if d["reason"] == "duplicate")
                log.events.extend(body["alerts"])
                log.scores.extend(body["scores"])
                log.next_row += self.chunk
                self._record(log, "200")

    def _record(self, log: StreamLog, outcome: str) -> None:
        log.outcomes[outcome] += 1
        self.timeline.append((time.monotonic(), log.stream_id, outcome))
