"""Where a request's time goes: py-spy samples ``vigil serve`` while wrk drives one request kind at peak.

    .venv/bin/python -m bench.profile_service --model tvnet --mode e [--seconds 15] [--workers 1] [--stride 1]
    .venv/bin/python -m bench.profile_service --folded STACKS [--functions]   # summarise stacks recorded before

``--folded`` reads folded stacks already recorded (by this script, or by ``py-spy record --format raw`` around any
command, e.g. ``bench.route_cost`` with ``--gil``) instead of recording; ``--functions`` counts a function once
whatever line of it a sample was on (py-spy names frames by line).

Prints the functions with the most samples (own time and total time, as py-spy's ``--format raw`` folded
stacks give them) and writes the folded stacks to ``artifacts/bench/profiles/<model>-<mode>.folded`` (feed
them to any flamegraph tool). py-spy comes with the ``dev`` extra; it needs ptrace (root here).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
from pathlib import Path

from bench import bundles, harness, peakload, report, workload
from models.manifest import Manifest

PROFILE_DIR = harness.BENCH_DIR / "profiles"


def summarise(folded: Path, top: int, functions: bool = False) -> tuple[list[tuple[str, int, int]], int]:
    """(frame, own samples, total samples) for the ``top`` frames by total, and the sample count; with
    ``functions``, frames are functions (``name (file)``), their line numbers dropped."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        if functions:
            frames = [frame.rpartition(":")[0] + ")" if frame.endswith(")") else frame for frame in frames]
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    rows = [(frame, own[frame], total[frame]) for frame, _ in total.most_common(top)]
    return rows, samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tvnet", choices=bundles.FAMILIES)
    parser.add_argument("--mode", default="e", help="request kind (bench/workload.py)")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument(
        "--threads", type=int, default=None, help="VIGIL_INTRA_OP_THREADS (default: the service's)"
    )
    parser.add_argument("--spinning", action="store_true", help="VIGIL_INTRA_OP_SPINNING=true")
    parser.add_argument(
        "--stride", type=int, default=None, help="serve the bundle at this stride (default 10)"
    )
    parser.add_argument(
        "--folded", type=Path, default=None, help="summarise these folded stacks, record none"
    )
    parser.add_argument("--functions", action="store_true", help="count by function, not by line")
    args = parser.parse_args()
    if args.folded is not None:
        print_summary(args.folded, args.top, args.functions)
        return
    py_spy = shutil.which("py-spy") or str(Path(harness.ROOT, ".venv", "bin", "py-spy"))

    bundle = bundles.family_bundle(args.model)
    if args.stride is not None:
        bundle = bundles.derived_bundle(bundle, args.stride)
    manifest = Manifest.load(bundle)
    mode = workload.modes()[args.mode]
    load = workload.Workload(
        mode, workload.sample_rows(), manifest.window_length, manifest.stride, n_streams=200
    )
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    folded = PROFILE_DIR / f"{args.model}-{args.mode}-s{manifest.stride}.folded"
    with (
        harness.redis_server() as redis_srv,
        harness.vigil_server(
            bundles.serve_dir([bundle]),
            redis_srv.url,
            workers=args.workers,
            intra_op_threads=args.threads,
            extra_env={"VIGIL_INTRA_OP_SPINNING": "true" if args.spinning else "false"},
        ) as srv,
    ):
        ts_base = workload.fresh_ts_base()
        load.prime(redis_srv.url, manifest.name, ts_base)
        pids = harness.process_tree(srv.pid)
        target = pids[-1] if args.workers == 1 else srv.pid  # the worker that serves, not the supervisor
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(target),
                "--duration",
                f"{int(args.seconds)}",
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(folded),
                "--nonblocking",
                *(["--subprocesses"] if args.workers > 1 else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # py-spy samples in its own process while wrk runs here; both last --seconds.
        peak = peakload.run_wrk(
            srv.base_url,
            load,
            srv.headers,
            ts_base + 10_000,
            connections=args.connections,
            duration_s=args.seconds,
        )
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
    print(f"# Profile of `vigil serve` ({args.model}, mode {args.mode}: {mode.title})")
    print(f"- command: `{report.command_line()}`")
    print(
        f"- load: wrk -c{args.connections} {args.seconds:g}s: {peak.rps:,.1f} req/s, p99 {peak.p99_ms:,.1f} ms"
    )
    print_summary(folded, args.top, args.functions)


def print_summary(folded: Path, top: int, functions: bool) -> None:
    rows, samples = summarise(folded, top, functions)
    print(f"- {samples} samples; folded stacks: {folded}\n")
    print("| frame | own % | total % |\n| --- | --- | --- |")
    for frame, own, total in rows:
        print(f"| `{frame}` | {100 * own / samples:.1f} | {100 * total / samples:.1f} |")


if __name__ == "__main__":
    main()
