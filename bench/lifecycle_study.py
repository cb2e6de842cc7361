"""Which alert lifecycle (k of n, m) to calibrate: every lifecycle of the calibration grid, each calibrated alone
on the validation part, then measured on the test part; beside it the oracle ceiling with that lifecycle.

    .venv/bin/python -m bench.lifecycle_study --rows tvnet,convtimenet+smooth_blevel [--machines ...]

Reads the calibrated bundles `bench/evaluate_smd.py` left under ``artifacts/eval/bundles`` (run it first).
The calibrated columns use validation data only; the ceiling is an oracle (threshold chosen on the test
labels) and says what a lifecycle allows, never what Vigil achieves. Prints one table per row: means over
the machines.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.smd_rows import CALIBRATIONS, SAMPLING_INTERVAL_S  # noqa: E402
from models.lifecycle import LevelThresholds  # noqa: E402
from models.runtime import load_bundle  # noqa: E402
from models.scoring import score_series  # noqa: E402
from training.alert_metrics import alert_ceiling, evaluate_alerts  # noqa: E402
from training.calibrate import calibrate, calibrate_alerts  # noqa: E402
from training.config import CalibrationConfig  # noqa: E402
from training.data import load_labels  # noqa: E402
from training.evaluate import score_test_series  # noqa: E402
from training.recalibrate import validation_parts  # noqa: E402

GRID_KN = [(1, 1), (2, 3), (3, 5), (5, 8)]
GRID_M = [3, 6, 12]
# Calibrations compared (CalibrationConfig overrides), by --study.
STUDIES: dict[str, dict[str, dict[str, Any]]] = {
    # Each lifecycle of the grid alone.
    "lifecycles": {
        f"{k} of {n}, m {m}": {"lifecycle_grid": [(k, n)], "resolve_grid": [m]}
        for k, n in GRID_KN
        for m in GRID_M
    },
    # How much of the validation part may be in alert: a validation tail that holds an unlabelled incident
    # (normal data rarely is clean) lifts a threshold held under a small share above the whole incident.
    "share": {f"max_alert_share {share}": {"max_alert_share": share} for share in (0.01, 0.02, 0.05, 0.1)},
}


def study(
    bundle_dir: Path, data: Path, machine: str, variants: dict[str, dict[str, Any]]
) -> dict[str, tuple[float, ...]]:
    """variant -> (calibrated recall, false/day, time-in-alert ratio, ceiling recall, the same without the
    critical shortcut, calibrated critical / warning, lifecycle equal to the bundle's)."""
    bundle = load_bundle(bundle_dir, "cpu", 2)
    manifest = bundle.manifest
    validation = [
        score_series(v, manifest.window_length, manifest.stride, bundle.run, manifest.score).scores
        for v in validation_parts(manifest, None, None)
    ]
    test = score_test_series(bundle, data / "test" / f"{machine}.txt.gz").scores
    labels = load_labels(data / "test_label" / f"{machine}.txt.gz", n_rows=test.shape[0])
    base = CalibrationConfig()
    point = calibrate(np.concatenate(validation), base)
    chosen = manifest.alerts
    out: dict[str, tuple[float, ...]] = {}
    for name, overrides in variants.items():
        config = base.model_copy(update=overrides)
        thresholds, policy = calibrate_alerts(validation, point, config)
        levels = LevelThresholds(thresholds.warning, thresholds.critical, policy, thresholds.baseline)
        report = evaluate_alerts(test, labels, levels, SAMPLING_INTERVAL_S)
        ceiling = alert_ceiling(test, labels, levels, SAMPLING_INTERVAL_S)
        # The same lifecycle without the critical shortcut (critical out of reach): k of n alone.
        apart = LevelThresholds(thresholds.warning, thresholds.warning * 1e12, policy, thresholds.baseline)
        ceiling_kn = alert_ceiling(test, labels, apart, SAMPLING_INTERVAL_S)
        same = chosen is not None and (chosen.k, chosen.n, chosen.m) == (policy.k, policy.n, policy.m)
        out[name] = (
            report.event_recall,
            report.false_alerts_per_day,
            report.time_in_alert / report.labelled_share,
            ceiling.event_recall,
            ceiling_kn.event_recall,
            thresholds.critical / thresholds.warning,
            float(same),
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="tvnet")
    parser.add_argument("--study", choices=sorted(STUDIES), default="lifecycles")
    parser.add_argument("--machines", default=None)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "smd")
    parser.add_argument("--bundles", type=Path, default=ROOT / "artifacts" / "eval" / "bundles")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "eval" / "lifecycle_study")
    args = parser.parse_args()
    for row in args.rows.split(","):
        base = CALIBRATIONS.get(row, (row, {}, {}))[0]
        machines = (
            args.machines.split(",")
            if args.machines
            else sorted(p.name for p in args.bundles.glob("machine-*") if (p / base / row).is_dir())
        )
        results = {}
        for machine in machines:
            # One result file per (study, row, machine): an interrupted study resumes.
            cache = args.out / args.study / row / f"{machine}.json"
            if not cache.exists():
                found = study(args.bundles / machine / base / row, args.data, machine, STUDIES[args.study])
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_text(json.dumps(found))
            results[machine] = {k: tuple(v) for k, v in json.loads(cache.read_text()).items()}
        print(f"\n## {row}: {len(machines)} machines ({', '.join(machines)})\n")
        print(
            "| calibration | calibrated recall | false/day | time in alert / labelled | ceiling recall "
            "| ceiling, k of n alone | critical / warning (median) | the bundle's lifecycle on |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for key in results[machines[0]]:
            cols = list(zip(*(results[m][key] for m in machines), strict=True))
            means = [statistics.fmean(x for x in c if not math.isnan(x)) for c in cols[:6]]
            print(
                f"| {key} | {means[0]:.3f} | {means[1]:.2f} | {means[2]:.2f} "
                f"| {means[3]:.3f} | {means[4]:.3f} | {statistics.median(cols[5]):.2f} | {int(sum(cols[6]))} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
