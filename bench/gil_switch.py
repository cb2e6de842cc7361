"""What the interpreter's switch interval does to an inference batch that shares the process with busy Python.

The service's inference worker runs ONNX Runtime and the scoring pass on a thread of the API process; the
event loop runs requests' Python on another. Each ONNX Runtime run (and numpy's larger loops) releases the
interpreter lock, and taking it back waits for the busy thread to be asked to drop it: one switch interval
(CPython's default 5 ms) each time. This measures one batch (``--windows`` real windows of the bench bundle, run
and scored as the worker does) alone and beside a thread running pure Python without pause, at each interval,
each in a fresh process.

    .venv/bin/python -m bench.gil_switch [--intervals 5,2,1,0.5,0.2] [--windows 20] [--seconds 5] [--repeat 2]

Columns: batches timed, and the batch's p50/p99 wall time in ms (median over the repeats, and their range).

What it does not show: that the service gains. ``VIGIL_SWITCH_INTERVAL_MS`` (commit dfac3bb, reverted after)
set the interval in ``vigil serve``; three rounds of ``bench.service_throughput --modes e,f --fractions 0.7``
alternating CPython's 5 ms, 1 ms and 0.2 ms gave no peak or p99 that moved beyond the spread between rounds
(BENCHMARKS.md, "The interpreter's switch interval"): the event loop is not a thread that never waits.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

from bench import bundles, report, workload


def probe(interval_ms: float, busy: bool, windows: int, seconds: float) -> dict[str, float]:
    """In this process: batches run back to back (5 ms apart) for ``seconds``; p50/p99 of their wall time."""
    from models.runtime import load_bundle
    from models.scoring import normalise, score_windows

    sys.setswitchinterval(interval_ms / 1000.0)
    loaded = load_bundle(bundles.family_bundle("tvnet"), "cpu", 0)
    manifest = loaded.manifest
    rows = normalise(workload.sample_rows(), manifest.normalisation)
    length = manifest.window_length
    batch = np.stack([rows[s : s + length] for s in range(0, windows * 10, 10)]).astype(np.float32)
    stop = threading.Event()

    def python_work() -> None:  # the event loop's stand-in: interpreter work that never waits
        total = 0
        while not stop.is_set():
            for i in range(2000):
                total += i * i

    worker = threading.Thread(target=python_work, daemon=True)
    if busy:
        worker.start()
    times: list[float] = []
    end = time.perf_counter() + seconds
    try:
        while time.perf_counter() < end:
            started = time.perf_counter()
            score_windows(batch, loaded.run(batch), manifest.score)
            times.append(time.perf_counter() - started)
            time.sleep(0.005)
    finally:
        stop.set()
    ms = np.asarray(times) * 1000.0
    return {
        "batches": float(len(ms)),
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
    }


def run_probe(interval_ms: float, busy: bool, args: argparse.Namespace) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.gil_switch", "--probe", str(interval_ms), "--windows"]
    command += [str(args.windows), "--seconds", str(args.seconds)] + ([] if busy else ["--alone"])
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--intervals", default="5,2,1,0.5,0.2", help="switch intervals to try, ms")
    parser.add_argument("--windows", type=int, default=20, help="windows per batch")
    parser.add_argument("--seconds", type=float, default=5.0, help="per interval and repeat")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--probe", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--alone", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe is not None:
        print(json.dumps(probe(args.probe, not args.alone, args.windows, args.seconds)))
        return
    report.print_header("The interpreter's switch interval and an inference batch beside busy Python")
    bundles.family_bundle("tvnet")  # trained once here, not inside a timed probe
    cases = [(5.0, False)] + [(float(ms), True) for ms in args.intervals.split(",")]
    rows = []
    for interval_ms, busy in cases:
        runs = [run_probe(interval_ms, busy, args) for _ in range(args.repeat)]
        p50s, p99s = [r["p50"] for r in runs], [r["p99"] for r in runs]
        rows.append(
            [
                f"{interval_ms:g}",
                "busy Python thread" if busy else "alone",
                int(statistics.median(r["batches"] for r in runs)),
                f"{statistics.median(p50s):.1f} ({min(p50s):.1f}-{max(p50s):.1f})",
                f"{statistics.median(p99s):.1f} ({min(p99s):.1f}-{max(p99s):.1f})",
            ]
        )
    report.print_table(
        ["switch interval ms", "beside", "batches", "p50 ms (range)", "p99 ms (range)"],
        rows,
        f"One batch of {args.windows} windows, run and scored, TVNet bench bundle",
    )


if __name__ == "__main__":
    main()
