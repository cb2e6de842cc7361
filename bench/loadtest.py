"""One load test of one request kind against one running server: the wrk peak, then the open-loop latency
curve at fractions of that peak, with the CPU used by the generator and by each process under test.

Both return plain dicts (medians over ``repeat`` runs) that the scripts print and save.
"""

from __future__ import annotations

import math
from typing import Any

from bench import report, scrape
from bench.harness import CPUMeter, Server
from bench.loadgen import run_open_loop
from bench.peakload import run_wrk
from bench.workload import Workload, fresh_ts_base, http_request

PEAK_KEYS = ("rps", "ok_rps", "p50_ms", "p99_ms", "max_ms", "errors", "wrk_cpu_pct")
CURVE_KEYS = (
    "offered_rps",
    "achieved_rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "max_ms",
    "errors",
    "unfinished",
    "generator_cpu_pct",
    "service_p99_ms",
    "ok_p99_ms",
    "refused_p99_ms",
    "ok_settled_p99_ms",
)


def measure_peak(
    server: Server,
    workload: Workload,
    cpu_pids: dict[str, int],
    repeat: int = 1,
    duration_s: float = 10.0,
    threads: int = 1,
    connections: int = 32,
) -> dict[str, Any]:
    """wrk at ``connections`` for ``duration_s`` (median of ``repeat`` runs), with CPU % per process."""
    runs = []
    for _ in range(repeat):
        meter = CPUMeter(cpu_pids)
        meter.start()
        result = run_wrk(
            server.base_url, workload, server.headers, fresh_ts_base(), threads, connections, duration_s
        )
        run = {k: getattr(result, k) for k in PEAK_KEYS}
        run.update({f"{name}_cpu_pct": pct for name, pct in meter.stop().items()})
        run["command"] = result.command
        runs.append(run)
    merged: dict[str, Any] = {k: report.median_of(runs, k) for k in runs[0] if k != "command"}
    merged["command"] = runs[0]["command"]
    merged["runs"] = runs
    return merged


def measure_curve(
    server: Server,
    workload: Workload,
    peak_rps: float,
    fractions: list[float],
    cpu_pids: dict[str, int],
    repeat: int = 1,
    step_s: float = 10.0,
    max_connections: int = 256,
) -> list[dict[str, Any]]:
    """Open-loop steps at ``fraction x peak_rps`` (Poisson arrivals), latency from the scheduled send time."""
    headers = workload.headers(server.headers)
    path = workload.mode.path
    steps = []
    for fraction in fractions:
        rate = max(1.0, fraction * peak_rps)
        runs = []
        for _ in range(repeat):
            base = fresh_ts_base()

            def make(index: int, base: int = base) -> bytes:
                return http_request("POST", path, headers, workload.body(index, base))

            meter = CPUMeter(cpu_pids)
            before = scrape.scrape(server.base_url)
            meter.start()
            result = run_open_loop(server.base_url, make, rate, step_s, max_connections=max_connections)
            run: dict[str, Any] = {k: getattr(result, k) for k in CURVE_KEYS}
            run.update(server_side(before, scrape.scrape(server.base_url)))
            run["late_pct"] = 100.0 * result.late_sends / max(result.sent, 1)
            run.update({f"{name}_cpu_pct": pct for name, pct in meter.stop().items()})
            run["statuses"] = result.statuses
            runs.append(run)
        step: dict[str, Any] = {k: report.median_of(runs, k) for k in runs[0] if k != "statuses"}
        step.update({"fraction": fraction, "target_rps": rate, "statuses": runs[0]["statuses"], "runs": runs})
        steps.append(step)
    return steps


def server_side(before: scrape.Sample, after: scrape.Sample) -> dict[str, float]:
    """What the server's own histograms saw in a step: the p99 and the bucket bound under which every
    observation fell, of a window's wait for its batch, of a batch's inference and scoring, and of the event
    loop's lag, to tell a stall in the inference worker from one in the event loop."""
    out: dict[str, float] = {}
    for key, name in (
        ("queue_wait", "vigil_queue_wait_seconds"),
        ("inference", "vigil_inference_duration_seconds"),
        ("loop_lag", "vigil_event_loop_lag_seconds"),
    ):
        delta = scrape.histogram_delta(before, after, name)
        out[f"{key}_p99_ms"] = 1000 * delta.quantile(0.99)
        reached = (bound for bound, count in delta.buckets if count >= delta.count)
        out[f"{key}_max_le_ms"] = 1000 * (next(reached, math.nan) if delta.count else math.nan)
    return out
