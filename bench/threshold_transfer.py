"""Does a validation-calibrated alert threshold transfer to the test period? Alternative calibration rules side
by side on the bundles `bench/evaluate_smd.py` trained, each choosing thresholds and lifecycle from the
validation part only, each measured on the untouched test part through the reference lifecycle.

    .venv/bin/python -m bench.threshold_transfer --row tvnet+smooth2_blevel [--machines ...] [--rules ...]
    .venv/bin/python -m bench.threshold_transfer --compare-rows tvnet_val+smooth2_blevel,tvnet+smooth2_blevel

Rules: ``cross-fit`` (the default: the validation part and each training block scored by the fold model that never
saw it), ``cross-fit-disturbed1`` (the same with the period that has the most alerts beyond its share left out of
the budget: ``--disturbed-periods 1``), ``cross-fit-auto`` (0 or 1 such periods, as the held-out periods choose,
each set aside in turn: ``--disturbed-periods auto``), ``validation`` (the validation part alone: the calibration before
cross-fitting became the default) and
``train+validation`` (the training part scored by the shipped model itself, which trained on it: in-sample
scores, so a diagnostic of how much more normal time helps, never a calibration to ship; the default
cross-fitted calibration, ``training/crossfit.py``, gets that time from models that did not train on it: the
family rows of `bench/evaluate_smd.py`, against their validation-only controls ``*_val``).

Scores are cached under ``artifacts/eval/transfer/<row>/<machine>.npz`` (validation, the training part before
it, test, labels). Prints one line per machine and rule and the means over machines.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.smd_rows import SAMPLING_INTERVAL_S  # noqa: E402
from models.lifecycle import LevelThresholds, replay_series  # noqa: E402
from models.manifest import AlertPolicy, Manifest  # noqa: E402
from models.runtime import load_bundle  # noqa: E402
from models.scoring import normalise, score_series  # noqa: E402
from training.alert_metrics import AlertReport, evaluate_alerts  # noqa: E402
from training.calibrate import calibrate_held_out  # noqa: E402
from training.config import CalibrationConfig  # noqa: E402
from training.crossfit import bundle_folds, held_out_scores  # noqa: E402
from training.data import load_labels, load_series, split_chronological  # noqa: E402
from training.recalibrate import fold_graphs  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "smd"
EVAL = ROOT / "artifacts" / "eval"
Scores = dict[str, np.ndarray]
Rule = Callable[[Scores, Manifest], tuple[float, float, AlertPolicy]]


def cached_scores(row: str, machine: str) -> Scores:
    cache = EVAL / "transfer" / row / f"{machine}.npz"
    family = row.split("+")[0]
    if cache.exists():
        kept = dict(np.load(cache))
        folds = bundle_folds(Manifest.load(EVAL / "bundles" / machine / family / row))
        if all(f"fold{i}" in kept for i in range(folds)):  # a cache from before the fold scores is rebuilt
            return kept
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
    folds = bundle_folds(m)
    if folds:  # the held-out series the default calibration replays: each block scored by its fold model
        blocks = held_out_scores(
            [split.train], folds, fold_graphs(bundle.path, m, folds, 1), m.window_length, m.stride, m.score
        )
        out.update({f"fold{i}": block for i, block in enumerate(blocks)})
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)  # type: ignore[arg-type]
    return out


def calibrated_on(
    s: Scores, m: Manifest, parts: tuple[str, ...] = ("validation",), **overrides: Any
) -> tuple[float, float, AlertPolicy]:
    config = CalibrationConfig.model_validate({**m.training.config["calibration"], **overrides})
    series = [s[p] for p in parts]
    thresholds, policy = calibrate_held_out(series, config)
    assert policy is not None, "the rules compare alert-level calibrations"
    return thresholds.warning, thresholds.critical, policy


def cross_fitted(s: Scores, m: Manifest) -> tuple[float, float, AlertPolicy]:
    """The default: the validation part and every training block scored by the fold model that never saw it."""
    return calibrated_on(s, m, tuple(periods(s)))


def cross_fitted_disturbed(s: Scores, m: Manifest) -> tuple[float, float, AlertPolicy]:
    """The same, with the held-out period that has the most alerts beyond its share left out of the budget."""
    return calibrated_on(s, m, tuple(periods(s)), disturbed_periods=1)


def cross_fitted_auto(s: Scores, m: Manifest) -> tuple[float, float, AlertPolicy]:
    """The same, with 0 or 1 periods left out as the held-out periods choose, each set aside in turn
    (``--disturbed-periods auto``, training/disturbed.py)."""
    return calibrated_on(s, m, tuple(periods(s)), disturbed_periods="auto")


def cross_fitted_critical_half(s: Scores, m: Manifest) -> tuple[float, float, AlertPolicy]:
    """The default, with the critical threshold at the lowest level whose one-point alerts spend at most half the
    budget (``--critical-budget-share 0.5``) instead of the point-level tail estimate."""
    return calibrated_on(s, m, tuple(periods(s)), critical_budget_share=0.5)


def periods(s: Scores) -> list[str]:
    """The held-out periods of the cross-fitted calibration: the validation part, then each block."""
    return ["validation", *sorted(k for k in s if k.startswith("fold"))]


def period_alerts(s: Scores, warning: float, critical: float, policy: AlertPolicy) -> list[int]:
    """Alerts each held-out period raises at these thresholds."""
    levels = LevelThresholds(warning, critical, policy)
    return [len(replay_series(s[p].astype(np.float64), levels)) for p in periods(s)]


RULES: dict[str, Rule] = {
    "validation": calibrated_on,
    "cross-fit": cross_fitted,
    "cross-fit-disturbed1": cross_fitted_disturbed,
    "cross-fit-auto": cross_fitted_auto,
    "cross-fit-critical-half": cross_fitted_critical_half,
    "train+validation": lambda s, m: calibrated_on(s, m, ("train", "validation")),
}


def measure(s: Scores, warning: float, critical: float, policy: AlertPolicy) -> AlertReport:
    levels = LevelThresholds(warning, critical, policy.model_copy(update={"thresholds": "fixed"}))
    return evaluate_alerts(s["test"], s["labels"], levels, SAMPLING_INTERVAL_S)


def compare_rows(rows: list[str]) -> None:
    """Per machine and mean: the alert figures `bench/evaluate_smd.py` saved for each row, with the thresholds
    its bundle serves (fixed, or per-stream for a bundle calibrated for them), then the means with both."""
    import json

    results = {
        row: {p.stem: json.loads(p.read_text()) for p in (EVAL / "results" / row).glob("*.json")}
        for row in rows
    }
    machines = sorted(set.intersection(*(set(r) for r in results.values())))
    served = {row: results[row][machines[0]]["alert_policy"].get("thresholds", "fixed") for row in rows}
    print("recall, false alerts a day, time in alert (the thresholds each bundle serves)")
    print(f"{'machine':12} " + " ".join(f"{row[:28]:>28}" for row in rows))
    print(f"{'':12} " + " ".join(f"{served[row]:>28}" for row in rows))
    for machine in machines:
        cells = []
        for row in rows:
            a = results[row][machine]["alerts"][served[row]]
            cells.append(f"{a['event_recall']:.3f} {a['false_alerts_per_day']:5.2f} {a['time_in_alert']:.3f}")
        print(f"{machine:12} " + " ".join(f"{c:>28}" for c in cells))
    for mode in ("fixed", "adaptive"):
        for row in rows:
            a = [results[row][m]["alerts"][mode] for m in machines]
            delays = [x["median_delay_points"] for x in a if not math.isnan(x["median_delay_points"])]
            print(
                f"mean {mode:8} {row:32} recall {statistics.mean(x['event_recall'] for x in a):.3f} "
                f"false/day {statistics.mean(x['false_alerts_per_day'] for x in a):.2f} "
                f"in alert {statistics.mean(x['time_in_alert'] for x in a):.3f} "
                f"median delay {statistics.median(delays):.1f} ({len(machines)} machines)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--row", default="tvnet+smooth2_blevel")
    parser.add_argument("--machines", default="")
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument(
        "--compare-rows", default="", help="instead: the saved evaluation results of rows side by side"
    )
    args = parser.parse_args()
    if args.compare_rows:
        compare_rows(args.compare_rows.split(","))
        return 0
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
        f"{'machine':12} {'rule':20} {'warning':>10} {'k/n m':>7} {'recall':>7} {'false/day':>9} {'in alert':>8}"
        "  alerts per held-out period (validation, blocks)"
    )
    for machine in machines:
        s = cached_scores(args.row, machine)
        m = Manifest.load(EVAL / "bundles" / machine / args.row.split("+")[0] / args.row)
        for rule in rules:
            warning, critical, policy = RULES[rule](s, m)
            r = measure(s, warning, critical, policy)
            totals[rule].append(r)
            print(
                f"{machine:12} {rule:20} {warning:10.3f} {policy.k}/{policy.n} {policy.m:<3} "
                f"{r.event_recall:7.3f} {r.false_alerts_per_day:9.2f} {r.time_in_alert:8.3f}  "
                f"{period_alerts(s, warning, critical, policy)}"
            )
    print()
    for rule, reports in totals.items():
        print(
            f"mean {rule:20} recall {statistics.mean(r.event_recall for r in reports):.3f} "
            f"false/day {statistics.mean(r.false_alerts_per_day for r in reports):.2f} "
            f"in alert {statistics.mean(r.time_in_alert for r in reports):.3f} "
            f"(labelled {statistics.mean(r.labelled_share for r in reports):.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
