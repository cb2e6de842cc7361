"""Does a validation-calibrated alert threshold transfer to the test period? Alternative calibration rules side
by side on the bundles `bench/evaluate_smd.py` trained, each choosing thresholds and lifecycle from the
validation part only, each measured on the untouched test part through the reference lifecycle.

    .venv/bin/python -m bench.threshold_transfer --row tvnet+smooth2_blevel [--machines ...] [--rules ...]

Scores are cached under ``artifacts/eval/transfer/<row>/<machine>.npz`` (validation, the training part before
it, test, labels). Prints one line per machine and rule and the means over machines.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.smd_rows import SAMPLING_INTERVAL_S  # noqa: E402
from models.lifecycle import LevelThresholds  # noqa: E402
from models.manifest import AlertPolicy, Manifest  # noqa: E402
from models.runtime import load_bundle  # noqa: E402
from models.scoring import normalise, score_series  # noqa: E402
from training.alert_metrics import AlertReport, evaluate_alerts  # noqa: E402
from training.calibrate import calibrate, calibrate_alerts  # noqa: E402
from training.config import CalibrationConfig  # noqa: E402
from training.data import load_labels, load_series, split_chronological  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "smd"
EVAL = ROOT / "artifacts" / "eval"
Scores = dict[str, np.ndarray]
Rule = Callable[[Scores, Manifest], tuple[float, float, AlertPolicy]]


def cached_scores(row: str, machine: str) -> Scores:
    cache = EVAL / "transfer" / row / f"{machine}.npz"
    if cache.exists():
        return dict(np.load(cache))
    family = row.split("+")[0]
    bundle = load_bundle(EVAL / "bundles" / machine / family / row, "cpu", 1)
    m = bundle.manifest
    config = m.training.config
    series = normalise(load_series(DATA / "train" / f"{machine}.txt.gz"), m.normalisation)
    split = split_chronological(series, config.get("validation_fraction", 0.2), m.window_length)

    def scored(values: np.ndarray) -> np.ndarray:
        return score_series(values, m.window_length, m.stride, bundle.run, m.score).scores

    test = load_series(DATA / "test" / f"{machine}.txt.gz")
    out = {
        "validation": scored(split.validation),
        "train": scored(split.train),
        "test": score_series(
            normalise(test, m.normalisation), m.window_length, m.stride, bundle.run, m.score
        ).scores,
    }
    out["labels"] = load_labels(DATA / "test_label" / f"{machine}.txt.gz", n_rows=out["test"].shape[0])
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)  # type: ignore[arg-type]
    return out


def current(
    s: Scores, m: Manifest, parts: tuple[str, ...] = ("validation",)
) -> tuple[float, float, AlertPolicy]:
    config = CalibrationConfig.model_validate(m.training.config["calibration"])
    series = [s[p] for p in parts]
    point = calibrate(np.concatenate(series), config)
    thresholds, policy = calibrate_alerts(series, point, config)
    return thresholds.warning, thresholds.critical, policy


RULES: dict[str, Rule] = {
    "current": current,
    "train+validation": lambda s, m: current(s, m, ("train", "validation")),
}


def measure(s: Scores, warning: float, critical: float, policy: AlertPolicy) -> AlertReport:
    levels = LevelThresholds(warning, critical, policy.model_copy(update={"thresholds": "fixed"}))
    return evaluate_alerts(s["test"], s["labels"], levels, SAMPLING_INTERVAL_S)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--row", default="tvnet+smooth2_blevel")
    parser.add_argument("--machines", default="")
    parser.add_argument("--rules", default=",".join(RULES))
    args = parser.parse_args()
    machines = (
        args.machines.split(",")
        if args.machines
        else sorted(
            p.name for p in (EVAL / "bundles").iterdir() if (p / args.row.split("+")[0] / args.row).exists()
        )
    )
    rules = args.rules.split(",")
    totals: dict[str, list[AlertReport]] = {r: [] for r in rules}
    print(
        f"{'machine':12} {'rule':18} {'warning':>10} {'k/n m':>7} {'recall':>7} {'false/day':>9} {'in alert':>8}"
    )
    for machine in machines:
        s = cached_scores(args.row, machine)
        m = Manifest.load(EVAL / "bundles" / machine / args.row.split("+")[0] / args.row)
        for rule in rules:
            warning, critical, policy = RULES[rule](s, m)
            r = measure(s, warning, critical, policy)
            totals[rule].append(r)
            print(
                f"{machine:12} {rule:18} {warning:10.3f} {policy.k}/{policy.n} {policy.m:<3} "
                f"{r.event_recall:7.3f} {r.false_alerts_per_day:9.2f} {r.time_in_alert:8.3f}"
            )
    print()
    for rule, reports in totals.items():
        print(
            f"mean {rule:18} recall {statistics.mean(r.event_recall for r in reports):.3f} "
            f"false/day {statistics.mean(r.false_alerts_per_day for r in reports):.2f} "
            f"in alert {statistics.mean(r.time_in_alert for r in reports):.3f} "
            f"(labelled {statistics.mean(r.labelled_share for r in reports):.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
