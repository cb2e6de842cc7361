"""Train and evaluate every model family on every SMD machine; write EVALUATION.md's tables.

    .venv/bin/python bench/evaluate_smd.py                      # all families, all machines (resumable)
    .venv/bin/python bench/evaluate_smd.py --families pca,tvnet --machines machine-1-2
    .venv/bin/python bench/evaluate_smd.py --report-only        # rebuild the tables from saved results

Protocol: `vigil train` defaults on each machine's train file (the last 20 % held out chronologically for
early stopping and threshold calibration: thresholds never see test data), then `vigil evaluate` on the
untouched test file with its labels and interpretation labels, and the test scores through the alert lifecycle
(fixed and per-stream thresholds). One result JSON per (row, machine) under --out, so an interrupted run
resumes where it stopped; trained bundles are kept and reused by rows that only change the calibration.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAMILIES = ["pca", "dense_ae", "lstm_ae", "tvnet", "convtimenet", "timesnet_ad"]
# Rows of the evaluation that are a family with fixed overrides: the same model, one thing changed.
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # TimesNet-AD with λ = 0: reconstruction-only TimesNet (plain MSE score), the control for issue 8.
    "timesnet_ad_lambda0": ("timesnet_ad", {"lambda_discrepancy": 0.0}, {}),
    # TVNet fed the globally standardised window, without the per-window normalisation (EVALUATION.md).
    "tvnet_no_window_norm": ("tvnet", {"window_norm": False}, {}),
    # ConvTimeNet ablations (issue 15): fewer, longer patches (2.5x fewer tokens per channel); the same without
    # the deformable layer; narrower; and twice the training budget.
    "convtimenet_p20": ("convtimenet", {"patch_length": 20, "patch_stride": 10}, {}),
    "convtimenet_p20_fixed": (
        "convtimenet",
        {"patch_length": 20, "patch_stride": 10, "deformable": False},
        {},
    ),
    "convtimenet_p20_d16": (
        "convtimenet",
        {"patch_length": 20, "patch_stride": 10, "d_model": 16, "d_ff": 32},
        {},
    ),
    "convtimenet_budget2x": ("convtimenet", {}, {"epochs": 12, "train_stride": 10}),
}
# Scoring options (training/score_fit.py), fitted on each machine's validation part: the ablation rows.
SCORINGS: dict[str, dict[str, Any]] = {
    "smooth": {"smoothing_alpha": 0.1},
    "level": {"level_alpha": 0.1},
    "smooth_level": {"smoothing_alpha": 0.1, "level_alpha": 0.1},
    # The level term balanced against the reconstruction term on validation (ScoreOptions.balance_level).
    "blevel": {"level_alpha": 0.1, "balance_level": True},
    "smooth_blevel": {"smoothing_alpha": 0.1, "level_alpha": 0.1, "balance_level": True},
    "q99_smooth": {"standardise": "q99", "smoothing_alpha": 0.1},
    "median_smooth": {"standardise": "median", "smoothing_alpha": 0.1},
    "top5_smooth": {"aggregation": "top_k", "top_k": 5, "smoothing_alpha": 0.1},
    "max_smooth": {"aggregation": "max", "smoothing_alpha": 0.1},
}
SCORED_FAMILIES = ["pca", "dense_ae", "lstm_ae", "tvnet", "convtimenet"]
# Rows trained once on every machine's training file (a fleet), evaluated on each machine's test file.
FLEETS: dict[str, str] = {"tvnet_fleet": "tvnet"}
# Rows that reuse another row's trained graph with another calibration or scoring (`vigil calibrate`): no
# retraining. (base row, calibration overrides, scoring options; {} is the plain mean squared error)
CALIBRATIONS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # The point-level POT thresholds of earlier runs with the service's default lifecycle (k 3 of 5, m 10):
    # the control for the false-alert-rate calibration (issue 13).
    **{f"{family}_pot": (family, {"false_alerts_per_day": None}, {}) for family in FAMILIES},
    # Per-stream thresholds that may rise above the calibrated ones (a stream noisier than validation) but never
    # fall below them (min_ratio 1 instead of 0.25): only the adaptive columns differ from the family's row.
    **{f"{family}_floor": (family, {"adaptive": {"min_ratio": 1.0}}, {}) for family in FAMILIES},
    # Every family with the same scoring options (a fair comparison), then each option alone on the two models
    # Vigil is built around.
    **{
        f"{family}+{name}": (family, {}, SCORINGS[name])
        for name in ("smooth_level", "smooth_blevel")
        for family in SCORED_FAMILIES
    },
    **{
        f"{family}+{name}": (family, {}, options)
        for family in ("tvnet", "convtimenet")
        for name, options in SCORINGS.items()
        if name not in ("smooth_level", "smooth_blevel")
    },
    **{
        f"{fleet}+{name}": (fleet, {}, SCORINGS[name])
        for fleet in FLEETS
        for name in ("smooth_level", "smooth_blevel")
    },
    # The default scoring with per-stream thresholds floored at the calibrated ones.
    **{
        f"{family}+smooth_blevel_floor": (family, {"adaptive": {"min_ratio": 1.0}}, SCORINGS["smooth_blevel"])
        for family in SCORED_FAMILIES
    },
}
ROWS = [*FAMILIES, *VARIANTS, *FLEETS, *CALIBRATIONS]
# What one plain run evaluates: every family, the fleet and every calibration/scoring row (the two training
# variants are measured on request: --families timesnet_ad_lambda0,tvnet_no_window_norm).
DEFAULT_ROWS = [*FAMILIES, *FLEETS, *CALIBRATIONS]
SAMPLING_INTERVAL_S = 60.0  # SMD: one point a minute
# The adaptive columns of every row follow each stream down and up (min_ratio 0.25, the service's default); the
# `_floor` rows floor the per-stream thresholds at the calibrated ones (min_ratio 1).
ADAPTIVE_COLUMNS: dict[str, Any] = {"adaptive": {"min_ratio": 0.25}}
ALERT_METRICS = [
    ("event_recall", "event recall"),
    ("false_alerts_per_day", "false alerts / day"),
    ("time_in_alert", "time in alert"),
    ("median_delay_points", "median delay (points)"),
    ("alerts_per_detected_event", "alerts per detected event"),
]
METRICS = [
    ("vus_pr", "VUS-PR"),
    ("auc_pr", "AUC-PR"),
    ("auc_roc", "AUC-ROC"),
    ("point_f1", "F1 (point, unadjusted)"),
    ("point_precision", "precision"),
    ("point_recall", "recall"),
    ("event_precision", "event precision"),
    ("event_recall", "event recall"),
    ("point_adjusted_f1", "PA-F1 (point-adjusted, for comparison with papers only)"),
    ("hit_rate_100", "HitRate@100%"),
    ("hit_rate_150", "HitRate@150%"),
]


def machines_in(data: Path) -> list[str]:
    return sorted(p.name.removesuffix(".txt.gz") for p in (data / "train").glob("machine-*.txt.gz"))


def train_row(data: Path, out: Path, row: str, machine: str, threads: int, extra: dict[str, Any]) -> Path:
    """The trained bundle of a family (or a training variant) on ``machine``: reused when already there."""
    from training.config import TrainConfig
    from training.pipeline import train_bundle

    fleet = row in FLEETS
    home = out / "bundles" / ("fleet" if fleet else machine)
    bundle = home / row / "eval"
    if (bundle / "manifest.json").exists():
        return bundle
    family, overrides, training = (FLEETS[row], {}, {}) if fleet else VARIANTS.get(row, (row, {}, {}))
    return train_bundle(
        TrainConfig(
            model=family,
            train_path=data / "train" if fleet else data / "train" / f"{machine}.txt.gz",
            out_dir=home,
            name=row,
            version="eval",
            threads=threads,
            progress=False,
            hyperparameters={**overrides, **extra},
            **training,
        )
    )


def run_one(
    data: Path, out: Path, row: str, machine: str, threads: int, extra: dict[str, Any]
) -> dict[str, Any]:
    """Train (or reuse) row ``row``'s bundle on ``machine``, calibrate it if the row says so, then evaluate it on
    the test file: ranking metrics, thresholded metrics and alerts through the lifecycle."""
    from models.manifest import Manifest
    from training.config import CalibrationConfig
    from training.evaluate import evaluate_bundle
    from training.recalibrate import recalibrate_bundle
    from training.score_fit import ScoreOptions

    # A row named by its family (or a training variant, or a fleet) is the plain score ({}), whatever `vigil
    # train`'s default scoring is, so that cached and fresh bundles give the same row.
    base, calibration, scoring = CALIBRATIONS.get(row, (row, {}, {}))
    bundle = train_row(data, out, base, machine, threads, extra)
    # Every row calibrates its trained graph with today's code (a cached bundle keeps the calibration of the
    # code that trained it); with the defaults this equals what `vigil train` writes. A fleet's bundle is
    # calibrated once, on every machine's validation tail.
    trained = time.perf_counter()
    calibrated = bundle.parent / row
    if base not in FLEETS or not (calibrated / "manifest.json").exists():
        bundle = recalibrate_bundle(
            bundle,
            CalibrationConfig(**{**ADAPTIVE_COLUMNS, **calibration}),
            version=row,
            score=ScoreOptions(**scoring),
            threads=threads,
        )
    bundle = calibrated
    prepared = time.perf_counter()
    manifest = Manifest.load(bundle)
    result = evaluate_bundle(
        bundle,
        data / "test" / f"{machine}.txt.gz",
        data / "test_label" / f"{machine}.txt.gz",
        data / "interpretation_label" / f"{machine}.txt",
        threads=threads,
        report=True,
        sampling_interval_s=SAMPLING_INTERVAL_S,
    )
    result.update(
        machine=machine,
        family=row,
        epochs_run=manifest.training.epochs_run,
        train_s=manifest.training.wall_time_s,
        evaluate_s=time.perf_counter() - prepared,
        calibrate_s=prepared - trained,
        bundle=str(bundle.relative_to(ROOT) if bundle.is_relative_to(ROOT) else bundle),
    )
    return result


def load_results(out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted((out / "results").glob("*/*.json")):
        record = json.loads(path.read_text())
        results.setdefault(record["family"], {})[record["machine"]] = record
    return results


def fmt(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.3f}"


def summary_table(results: dict[str, dict[str, dict[str, Any]]], families: list[str]) -> list[str]:
    lines = ["| family | machines | " + " | ".join(f"{label} mean / median" for _, label in METRICS) + " |"]
    lines.append("|---|---|" + "---|" * len(METRICS))
    for family in families:
        runs = list(results.get(family, {}).values())
        if not runs:
            continue
        cells = []
        for key, _ in METRICS:
            values = [r["metrics"][key] for r in runs if r["metrics"].get(key) is not None]
            values = [v for v in values if v == v]
            cells.append(
                f"{fmt(statistics.mean(values))} / {fmt(statistics.median(values))}" if values else "—"
            )
        lines.append(f"| {family} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def _mean_median(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v == v]
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), statistics.median(values)


def alert_table(results: dict[str, dict[str, dict[str, Any]]], families: list[str], mode: str) -> list[str]:
    """Alerts through the lifecycle: mean / median over machines (delay: median over machines of each machine's
    median delay), with the labelled share beside time in alert."""
    head = " | ".join(f"{label}" for _, label in ALERT_METRICS)
    lines = [
        f"| row | machines | VUS-PR | {head} | labelled share | (k, n, m) |",
        "|---|---|---|" + "---|" * (len(ALERT_METRICS) + 2),
    ]
    for family in families:
        runs = [r for r in results.get(family, {}).values() if "alerts" in r]
        if not runs:
            continue
        cells = []
        for key, _ in ALERT_METRICS:
            mean, median = _mean_median([r["alerts"][mode][key] for r in runs])
            cells.append(f"{fmt(median)}" if key == "median_delay_points" else f"{fmt(mean)} / {fmt(median)}")
        vus = _mean_median([r["metrics"]["vus_pr"] for r in runs])
        labelled = _mean_median([r["alerts"][mode]["labelled_share"] for r in runs])
        policies = Counter(
            (r["alert_policy"]["k"], r["alert_policy"]["n"], r["alert_policy"]["m"]) for r in runs
        )
        common = ", ".join(f"{k}/{n}/{m} ×{c}" for (k, n, m), c in policies.most_common(2))
        lines.append(
            f"| {family} | {len(runs)} | {fmt(vus[0])} / {fmt(vus[1])} | "
            + " | ".join(cells)
            + f" | {fmt(labelled[0])} | {common} |"
        )
    return lines


def ceiling_table(results: dict[str, dict[str, dict[str, Any]]], families: list[str]) -> list[str]:
    """The oracle: the best event recall one threshold reaches on each machine's test data within 1 false
    alert a day and time in alert <= 2x labelled, beside what the calibrated thresholds reached."""
    lines = [
        "| row | machines | oracle event recall mean / median | calibrated (fixed) event recall mean / median "
        "| machines where no threshold fits the budget |",
        "|---|---|---|---|---|",
    ]
    for family in families:
        runs = [r for r in results.get(family, {}).values() if "alert_ceiling" in r]
        if not runs:
            continue
        oracle = _mean_median([r["alert_ceiling"]["event_recall"] for r in runs])
        fixed = _mean_median([r["alerts"]["fixed"]["event_recall"] for r in runs])
        none = sum(1 for r in runs if r["alert_ceiling"]["warning"] != r["alert_ceiling"]["warning"])
        lines.append(
            f"| {family} | {len(runs)} | {fmt(oracle[0])} / {fmt(oracle[1])} | {fmt(fixed[0])} / "
            f"{fmt(fixed[1])} | {none} |"
        )
    return lines


def alert_machine_table(
    results: dict[str, dict[str, dict[str, Any]]], families: list[str], mode: str
) -> list[str]:
    """Per machine: event recall / false alerts a day, for each row."""
    present = [f for f in families if f in results]
    machines = sorted({m for f in present for m in results[f]})
    lines = ["| machine | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for machine in machines:
        cells = []
        for f in present:
            alerts = results[f].get(machine, {}).get("alerts", {}).get(mode)
            cells.append(
                f"{fmt(alerts['event_recall'])} / {alerts['false_alerts_per_day']:.1f}" if alerts else "—"
            )
        lines.append(f"| {machine} | " + " | ".join(cells) + " |")
    return lines


def machine_table(results: dict[str, dict[str, dict[str, Any]]], families: list[str], key: str) -> list[str]:
    present = [f for f in families if f in results]
    machines = sorted({m for f in present for m in results[f]})
    lines = ["| machine | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for machine in machines:
        row = [fmt(results[f].get(machine, {}).get("metrics", {}).get(key)) for f in present]
        lines.append(f"| {machine} | " + " | ".join(row) + " |")
    return lines


def refused_lines(out: Path) -> list[str]:
    """Runs whose bundle the training pipeline's gates refused (parity, divergence): no score, said so."""
    lines = [
        f"- `{path.parent.name}` on {path.stem}: refused, {path.read_text().strip()}"
        for path in sorted((out / "refused").glob("*/*.txt"))
        if not (out / "results" / path.parent.name / f"{path.stem}.json").exists()
    ]
    return ["Runs without a score (the pipeline refused the bundle):", "", *lines, ""] if lines else []


def _train_s(row: str, runs: list[dict[str, Any]]) -> float:
    """Training time of a row: none for calibration rows, once for a fleet, else the sum over machines."""
    if row in CALIBRATIONS or not runs:
        return 0.0
    if row in FLEETS:
        return float(max(r["train_s"] for r in runs))
    return float(sum(r["train_s"] for r in runs))


def timing_table(results: dict[str, dict[str, dict[str, Any]]], families: list[str]) -> list[str]:
    lines = [
        "| row | train s (sum) | calibrate s (sum) | evaluate s (sum) | epochs run (median) |",
        "|---|---|---|---|---|",
    ]
    for family in families:
        runs = list(results.get(family, {}).values())
        if runs:
            epochs = statistics.median(r.get("epochs_run", 0) for r in runs)
            train = _train_s(family, runs)
            calibrate = sum(r.get("calibrate_s", 0.0) for r in runs)
            lines.append(
                f"| {family} | {train:.0f} | {calibrate:.0f} | {sum(r['evaluate_s'] for r in runs):.0f} | "
                f"{epochs:g} |"
            )
    return lines


def headline_rows(rows: list[str]) -> list[str]:
    """The rows the per-machine tables show (one column each): every family with its plain and its default
    scoring, the fleet, and the training variants; the ablation rows are in the summary tables only."""
    shown = {*FAMILIES, *VARIANTS, *FLEETS, *(f"{row}+smooth_blevel" for row in [*FAMILIES, *FLEETS])}
    return [row for row in rows if row in shown]


def write_tables(out: Path, families: list[str], command: str, path: Path) -> None:
    results = load_results(out)
    total = sum(
        _train_s(row, list(runs.values()))
        + sum(r.get("calibrate_s", 0.0) + r["evaluate_s"] for r in runs.values())
        for row, runs in results.items()
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    text = [
        "<!-- generated by bench/evaluate_smd.py: edit the script, not this block -->",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} cores ({cpu}), {datetime.now(UTC):%Y-%m-%d}; "
        f"wall time of all trainings, calibrations and evaluations: {total / 60:.1f} min; "
        f"{SAMPLING_INTERVAL_S:g} s between points.",
        "",
        "### Alerts as an operator lives them (fixed thresholds), mean / median over the machines",
        "",
        *alert_table(results, families, "fixed"),
        "",
        "### The same with thresholds that follow each stream (adaptive, from the test period's own start)",
        "",
        *alert_table(results, families, "adaptive"),
        "",
        "### What the scores could reach: an oracle threshold per machine (chosen on test data: a diagnostic, "
        "never a result)",
        "",
        *ceiling_table(results, families),
        "",
        "### Event recall / false alerts a day per machine (fixed thresholds; plain and default scoring)",
        "",
        *alert_machine_table(results, headline_rows(families), "fixed"),
        "",
        "### Ranking and point metrics, mean / median over the machines",
        "",
        *summary_table(results, families),
        "",
        *refused_lines(out),
        "### VUS-PR per machine",
        "",
        *machine_table(results, headline_rows(families), "vus_pr"),
        "",
        "### Unadjusted point F1 at the calibrated warning threshold, per machine",
        "",
        *machine_table(results, headline_rows(families), "point_f1"),
        "",
        "### Time",
        "",
        *timing_table(results, families),
        "<!-- end of generated block -->",
    ]
    block = "\n".join(text) + "\n"
    if path.exists():
        current = path.read_text()
        start = current.find("<!-- generated by bench/evaluate_smd.py")
        end = current.find("<!-- end of generated block -->")
        if start != -1 and end != -1:
            block = current[:start] + block + current[end + len("<!-- end of generated block -->\n") :]
    path.write_text(block)
    print(block)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "smd")
    parser.add_argument(
        "--families", default=",".join(DEFAULT_ROWS), help=f"comma-separated rows: {', '.join(ROWS)}"
    )
    parser.add_argument("--machines", default=None, help="comma-separated, default: every machine in --data")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "eval")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hyperparameters", default="{}", help="JSON overrides for every family (ablations)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="re-evaluate pairs that already have a result (bundles are reused)",
    )
    parser.add_argument("--retrain", action="store_true", help="with --force: train the bundles anew too")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--write", type=Path, default=ROOT / "EVALUATION.md")
    args = parser.parse_args()
    families = args.families.split(",")
    unknown = set(families) - set(ROWS)
    if unknown:
        parser.error(f"--families: unknown {sorted(unknown)}; choose from {ROWS}")
    if not args.report_only:
        from training.export import ExportError
        from training.loop import TrainingDiverged

        machines = args.machines.split(",") if args.machines else machines_in(args.data)
        for machine in machines:
            for family in families:
                target = args.out / "results" / family / f"{machine}.json"
                if target.exists() and not args.force:
                    continue
                if args.retrain and family not in CALIBRATIONS:
                    shutil.rmtree(args.out / "bundles" / machine / family, ignore_errors=True)
                try:
                    result = run_one(
                        args.data, args.out, family, machine, args.threads, json.loads(args.hyperparameters)
                    )
                except (ExportError, TrainingDiverged) as exc:
                    # The pipeline's own gates refused the bundle: that is a result (the row has no score on
                    # this machine, and the tables say so), not a reason to stop the other runs.
                    print(f"{machine} {family:<12} REFUSED: {type(exc).__name__}: {exc}", flush=True)
                    failed = args.out / "refused" / family / f"{machine}.txt"
                    failed.parent.mkdir(parents=True, exist_ok=True)
                    failed.write_text(f"{type(exc).__name__}: {exc}\n")
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(result, indent=2))
                m, a = result["metrics"], result["alerts"]["fixed"]
                print(
                    f"{machine} {family:<20} VUS-PR {fmt(m['vus_pr'])} F1 {fmt(m['point_f1'])} | alerts: recall "
                    f"{fmt(a['event_recall'])} false/day {a['false_alerts_per_day']:.2f} in alert "
                    f"{a['time_in_alert']:.3f} (labelled {a['labelled_share']:.3f}) | "
                    f"train {result['train_s']:.0f}s eval {result['evaluate_s']:.0f}s",
                    flush=True,
                )
    write_tables(args.out, ROWS, "python bench/evaluate_smd.py", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
