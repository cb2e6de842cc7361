"""A virtual clock for :class:`service.inflight.InflightLimitMiddleware`: a server that completes a fixed number of
requests a second, first in first out, behind the middleware's own admit and release, driven by open-loop
(Poisson) or closed-loop arrivals and, where asked, stalls. ``tests/service/test_inflight_backlog.py`` holds the
bounds to the loads issue 17 names on it; run as a module it prints what a light key at 70 % of capacity is
refused when the server stalls now and then (the soak's case):

    .venv/bin/python -m bench.inflight_sim [--capacity 700] [--stalls 0.1,0.2,0.3,0.45] [--seeds 1,2,3]
"""

from __future__ import annotations

import argparse
import heapq
from dataclasses import dataclass, field

import numpy as np

from bench import report
from service.inflight import InflightLimitMiddleware
from service.metrics import Metrics

KEY = b"key"
CAPACITY = 70.0  # requests a second: a 100-item /score/batch request on two cores


@dataclass
class Outcome:
    """Per request: its arrival, and its time in the server (None: refused or not done)."""

    arrivals: list[float] = field(default_factory=list)
    sojourns: list[float | None] = field(default_factory=list)
    refused: int = 0

    def admitted_p99_after(self, start_s: float) -> float:
        kept = [
            s for t, s in zip(self.arrivals, self.sojourns, strict=True) if t >= start_s and s is not None
        ]
        return float(np.percentile(kept, 99))

    @property
    def served(self) -> int:
        return sum(s is not None for s in self.sojourns)


class Simulation:
    """Events on a virtual clock: arrivals, and completions ``1 / CAPACITY`` apart once the server is busy."""

    def __init__(self, per_key: int = 64, capacity: float = CAPACITY) -> None:
        self.now = 0.0
        self.capacity = capacity
        self.limiter = InflightLimitMiddleware(
            None,  # type: ignore[arg-type]  # admit and release only: no ASGI call
            max_inflight=256,
            metrics=Metrics(),
            per_key=per_key,
            clock=lambda: self.now,
        )
        self.free_at = 0.0
        self.events: list[tuple[float, int, str, int]] = []  # (time, order, kind, request)
        self.outcome = Outcome()
        self._order = 0

    def arrive(self, at_s: float) -> None:
        self._push(at_s, "arrive", -1)

    def poisson(self, rate_per_s: float, until_s: float, seed: int) -> None:
        """Arrivals at ``rate_per_s`` on average, independent of one another (an open loop), until ``until_s``."""
        gaps = np.random.default_rng(seed).exponential(
            1 / rate_per_s, size=int(rate_per_s * until_s * 2) + 10
        )
        for at in np.cumsum(gaps):
            if at < until_s:
                self.arrive(float(at))

    def stall(self, at_s: float, duration_s: float) -> None:
        """The server does nothing for ``duration_s`` once the requests admitted before ``at_s`` are done (a full
        garbage collection, a slow batch, the cores taken by something else)."""
        self._push(at_s, "stall", int(duration_s * 1e6))

    def _push(self, at_s: float, kind: str, request: int) -> None:
        self._order += 1
        heapq.heappush(self.events, (at_s, self._order, kind, request))

    def run(self, until_s: float, closed_loop: bool = False) -> Outcome:
        while self.events and self.events[0][0] < until_s:
            self.now, _, kind, request = heapq.heappop(self.events)
            if kind == "stall":
                self.free_at = max(self.now, self.free_at) + request / 1e6
                continue
            if kind == "arrive":
                request = len(self.outcome.arrivals)
                self.outcome.arrivals.append(self.now)
                self.outcome.sojourns.append(None)
                if self.limiter.admit(KEY, self.now) is None:
                    self.free_at = max(self.now, self.free_at) + 1 / self.capacity
                    self._push(self.free_at, "complete", request)
                    continue
                self.outcome.refused += 1
                if closed_loop:
                    self.arrive(self.now + 0.001)  # the client sends again at once, as wrk does
            else:
                sojourn = self.now - self.outcome.arrivals[request]
                self.outcome.sojourns[request] = sojourn
                self.limiter.release(KEY, self.now, sojourn)
                if closed_loop:
                    self.arrive(self.now + 0.002)  # the answer's way back and the next request's way in
        return self.outcome


def open_loop(
    rate_per_s: float, duration_s: float, seed: int = 7, simulation: Simulation | None = None
) -> Outcome:
    simulation = simulation or Simulation()
    simulation.poisson(rate_per_s, duration_s, seed)
    return simulation.run(duration_s + 5)


def stalled_light_key(capacity: float, stall_s: float, seed: int, duration_s: float = 60.0) -> Outcome:
    """One key at 70 % of ``capacity`` for ``duration_s``, the server stalled ``stall_s`` every 5 s."""
    simulation = Simulation(capacity=capacity)
    simulation.poisson(0.7 * capacity, duration_s, seed)
    for at in np.arange(5.0, duration_s, 5.0):
        simulation.stall(float(at), stall_s)
    return simulation.run(duration_s + 5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--capacity", type=float, default=700.0, help="requests a second the server completes"
    )
    parser.add_argument("--stalls", default="0.1,0.2,0.3,0.45", help="stall lengths, s (one every 5 s)")
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args()
    report.print_header("In-flight bounds on a virtual clock: a light key at 70 % with stalls")
    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows = []
    for stall_s in (float(s) for s in args.stalls.split(",")):
        outcomes = [stalled_light_key(args.capacity, stall_s, seed) for seed in seeds]
        rows.append(
            [
                f"{stall_s:g}",
                ", ".join(f"{o.refused:,} of {len(o.arrivals):,}" for o in outcomes),
                ", ".join(f"{o.admitted_p99_after(0.0) * 1000:.0f}" for o in outcomes),
            ]
        )
    report.print_table(
        ["stall s (every 5 s)", f"refused, seeds {args.seeds}", "admitted p99 ms"],
        rows,
        f"70 % of {args.capacity:g} requests/s for 60 s, one key, the service's limits",
    )


if __name__ == "__main__":
    main()
