"""ONNX Runtime windows/s of trained bundles as they are (any family, any hyper-parameters): what serving a
variant would cost, beside its detection quality in EVALUATION.md.

    .venv/bin/python -m bench.bundle_throughput artifacts/eval/bundles/machine-2-3/{convtimenet_p8,convtimenet}/eval

Each bundle is opened the way the service opens it (``models.runtime.load_bundle``, CPU provider, intra-op
threads as given), then random normalised windows of the bundle's shape are run in batches for ``--seconds``
per batch size; the table gives windows/s and the median latency of one batch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench import report
from models.runtime import load_bundle


def windows_per_s(bundle_dir: Path, batch: int, seconds: float, threads: int) -> tuple[float, float]:
    """(windows/s, median ms per batch) of ``bundle_dir`` at ``batch`` windows per call."""
    bundle = load_bundle(bundle_dir, "cpu", threads, spinning=False)
    manifest = bundle.manifest
    shape = (batch, manifest.window_length, manifest.n_features)
    windows = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    for _ in range(2):
        bundle.run(windows)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(latencies) < 3:
        started = time.perf_counter()
        bundle.run(windows)
        latencies.append(time.perf_counter() - started)
    return batch * len(latencies) / sum(latencies), float(np.median(latencies)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundles", nargs="+", type=Path, help="bundle directories (NAME/VERSION)")
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    report.print_header("ONNX Runtime windows/s of trained bundles")
    rows = []
    for bundle_dir in args.bundles:
        for batch in batches:
            rate, median_ms = windows_per_s(bundle_dir, batch, args.seconds, args.threads)
            rows.append([str(bundle_dir), batch, rate, median_ms])
    report.print_table(["bundle", "batch", "windows/s", "median ms per batch"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
