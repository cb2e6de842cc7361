"""The garbage collector's pauses in the serving process, with and without ``VIGIL_GC_FREEZE``.

    .venv/bin/python -m bench.gc_pauses                  # TVNet, binary stream requests at 70 % of peak
    .venv/bin/python -m bench.gc_pauses --mode d --fraction 0.7

Runs ``bench.service_throughput`` (peak, then one open-loop step) once per setting, with ``bench/gc_probe`` on
the server's PYTHONPATH: every collection's generation and duration is logged by the server itself, over its
whole run (start-up, the 10 s wrk peak and the step). Prints, per setting, the collections of each generation,
the full (generation 2) pauses and the step's latency.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def server_pauses(folder: Path) -> dict[int, list[float]]:
    """Pause durations (ms) per generation, from the probe log of the ``vigil serve`` process."""
    best: dict[int, list[float]] = {}
    for log in folder.glob("*.log"):
        lines = log.read_text().splitlines()
        if not lines or " serve" not in lines[0]:
            continue
        pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        for line in lines[1:]:
            generation, ms = line.split()
            pauses[int(generation)].append(float(ms))
        if sum(map(len, pauses.values())) > sum(map(len, best.values())):
            best = pauses
    return best


def run(freeze: bool, args: argparse.Namespace) -> tuple[dict[int, list[float]], dict[str, float]]:
    with tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "GC_PROBE_DIR": folder,
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT / "bench" / "gc_probe"), os.environ.get("PYTHONPATH", "")]
            ),
            "VIGIL_GC_FREEZE": "true" if freeze else "false",
        }
        command = [sys.executable, "-m", "bench.service_throughput", "--model", args.model, "--strides", "10"]
        command += ["--modes", args.mode, "--fractions", str(args.fraction), "--step", str(args.step)]
        out = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        found = re.search(r"raw results: (\S+)", out)
        if found is None:
            raise RuntimeError(out[-2000:])
        records = json.loads((ROOT / found.group(1)).read_text())["records"]
        step = next(r for r in records if r.get("kind") == "curve" and r["fraction"] == args.fraction)
        return server_pauses(Path(folder)), step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tvnet")
    parser.add_argument("--mode", default="e", choices=list("abcdefghi"), help="a service_throughput mode")
    parser.add_argument("--fraction", type=float, default=0.7, help="open-loop rate as a fraction of peak")
    parser.add_argument("--step", type=float, default=20.0, help="seconds of the open-loop step")
    args = parser.parse_args()
    print(f"mode {args.mode}, {args.model}, {100 * args.fraction:.0f} % of peak for {args.step:.0f} s\n")
    print(
        "| VIGIL_GC_FREEZE | collections gen 0 / 1 / 2 | full pause p50 ms | full pause max ms | pauses over 10 ms "
        "| all pauses ms | step p50 ms | step p99 ms | step max ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for freeze in (False, True):
        pauses, step = run(freeze, args)
        full = pauses.get(2) or [float("nan")]
        every = [ms for generation in pauses.values() for ms in generation]
        counts = " / ".join(str(len(pauses.get(g, []))) for g in (0, 1, 2))
        print(
            f"| {str(freeze).lower()} | {counts} | {np.median(full):.1f} | {max(full):.1f} | "
            f"{sum(ms > 10 for ms in every)} | {sum(every):.0f} | {step['p50_ms']:.1f} | {step['p99_ms']:.1f} | "
            f"{step['max_ms']:.1f} |"
        )


if __name__ == "__main__":
    main()
