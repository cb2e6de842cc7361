"""Where the time in alert goes: each firing alert's points split into those inside a labelled event, those after
(or before) an event the alert overlaps, and those of false alerts (overlapping no event).

    .venv/bin/python -m bench.alert_time_study --rows tvnet,tvnet+smooth_blevel [--machines ...]

Reads the calibrated bundles `bench/evaluate_smd.py` left under ``artifacts/eval/bundles`` (run it first) and
replays the test scores through the reference lifecycle with the bundle's fixed thresholds, exactly as the
evaluation does. Prints, per row, one line per machine and the means: shares of the test time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.smd_rows import SAMPLING_INTERVAL_S, machines_in, row_bundle  # noqa: E402
from models.lifecycle import AlertSpan, replay_series  # noqa: E402
from models.runtime import load_bundle  # noqa: E402
from training.alert_metrics import measure_alerts  # noqa: E402
from training.data import load_labels  # noqa: E402
from training.evaluate import alert_levels, score_test_series  # noqa: E402

COLUMNS = (
    "labelled",
    "event recall",
    "in alert",
    "inside events",
    "around detected events",
    "false alerts",
    "longest alert",
)


def split_alert_time(spans: list[AlertSpan], labels: np.ndarray) -> tuple[float, float, float, float]:
    """(inside events, around detected events, false alerts) as shares of the series, and the longest alert
    in points."""
    inside = around = false = longest = 0
    for span in spans:
        overlap = int(labels[span.start : span.end].sum())
        length = span.end - span.start
        longest = max(longest, length)
        if overlap:
            inside += overlap
            around += length - overlap
        else:
            false += length
    return inside / labels.size, around / labels.size, false / labels.size, float(longest)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", required=True)
    parser.add_argument("--machines", default=None)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "smd")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "eval")
    args = parser.parse_args()
    machines = args.machines.split(",") if args.machines else machines_in(args.data)
    for row in args.rows.split(","):
        print(f"\n### {row}\n")
        print("| machine | " + " | ".join(COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 1) + "|")
        rows: list[tuple[float, ...]] = []
        for machine in machines:
            bundle_dir = row_bundle(args.out, row, machine)
            if not (bundle_dir / "manifest.json").exists():
                print(f"| {machine} | (no bundle) |")
                continue
            bundle = load_bundle(bundle_dir, "cpu", 2)
            scored = score_test_series(bundle, args.data / "test" / f"{machine}.txt.gz")
            labels = load_labels(args.data / "test_label" / f"{machine}.txt.gz", n_rows=scored.scores.size)
            spans = replay_series(scored.scores, alert_levels(bundle.manifest, "fixed"))
            report = measure_alerts(spans, labels, SAMPLING_INTERVAL_S)
            figures = (
                report.labelled_share,
                report.event_recall,
                report.time_in_alert,
                *split_alert_time(spans, np.asarray(labels)),
            )
            rows.append(figures)
            print(
                f"| {machine} | " + " | ".join(f"{v:.3f}" for v in figures[:-1]) + f" | {figures[-1]:.0f} |"
            )
        if rows:
            means = [statistics.fmean(col) for col in zip(*rows, strict=True)]
            print("| mean | " + " | ".join(f"{v:.3f}" for v in means[:-1]) + f" | {means[-1]:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
