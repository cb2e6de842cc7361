"""Peak (closed-loop) load with wrk: the most requests per second a server sustains at a fixed concurrency.

wrk (Debian's 4.1) runs one Lua script from ``bench/wrk/`` per request kind; ``report.lua`` makes it print
one ``WRK_JSON`` line with counts and latency percentiles. The generator's own CPU comes from ``wait4``'s
rusage of the wrk process. wrk is closed-loop: use its latency only as "latency at saturation" and take the
latency curve from the open-loop generator (``bench/loadgen.py``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass

from bench.workload import Workload


@dataclass(frozen=True)
class PeakResult:
    requests: int
    duration_s: float
    rps: float  # all responses (2xx and not) per second
    ok_rps: float  # 2xx responses per second
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int  # non-2xx, socket errors and timeouts
    wrk_cpu_pct: float  # % of one core
    command: str


def wrk_binary() -> str:
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    return binary


def run_wrk(
    base_url: str,
    workload: Workload,
    auth: dict[str, str],
    ts_base: int,
    threads: int = 1,
    connections: int = 32,
    duration_s: float = 10.0,
) -> PeakResult:
    args = workload.wrk_args(ts_base, threads)
    headers = [item for k, v in auth.items() for item in ("-H", f"{k}: {v}")]
    command = [
        wrk_binary(),
        "-t",
        str(threads),
        "-c",
        str(connections),
        "-d",
        f"{duration_s:g}s",
        "--timeout",
        "10s",
        *headers,
        "-s",
        str(workload.wrk_script()),
        base_url + workload.mode.path,
        "--",
        *args,
    ]
    shown = shlex.join(command)
    for value in auth.values():
        shown = shown.replace(value.split()[-1], "$BENCH_KEY")
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    line = next((ln for ln in output.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{output[-3000:]}\ncommand: {shown}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    duration = data["duration_us"] / 1e6
    socket_errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
    non_2xx = data["status_errors"]
    return PeakResult(
        requests=data["requests"],
        duration_s=duration,
        rps=data["requests"] / duration,
        ok_rps=(data["requests"] - non_2xx) / duration,
        p50_ms=data["p50_us"] / 1000.0,
        p99_ms=data["p99_us"] / 1000.0,
        max_ms=data["max_us"] / 1000.0,
        errors=non_2xx + socket_errors,
        wrk_cpu_pct=100.0 * (usage.ru_utime + usage.ru_stime) / wall,
        command=shown,
    )
