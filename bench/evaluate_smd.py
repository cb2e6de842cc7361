"""Train and evaluate every model family on every SMD machine; write EVALUATION.md's tables.

    .venv/bin/python bench/evaluate_smd.py                      # all families, all machines (resumable)
    .venv/bin/python bench/evaluate_smd.py --families pca,tvnet --machines machine-1-2
    .venv/bin/python bench/evaluate_smd.py --report-only        # rebuild the tables from saved results
    .venv/bin/python bench/evaluate_smd.py --jobs 2             # machines split over 2 processes, 1 thread each

Protocol: `vigil train` defaults on each machine's train file (the last 20 % held out chronologically for
early stopping and threshold calibration: thresholds never see test data), then `vigil evaluate` on the
untouched test file with its labels and interpretation labels, and the test scores through the alert lifecycle
(fixed and per-stream thresholds). One result JSON per (row, machine) under --out, so an interrupted run
resumes where it stopped; trained bundles are kept and reused by rows that only change the calibration.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from bench.smd_report import fmt, write_tables  # noqa: E402
from bench.smd_rows import (  # noqa: E402
    ADAPTIVE_COLUMNS,
    CALIBRATIONS,
    DEFAULT_ROWS,
    FLEETS,
    ROWS,
    SAMPLING_INTERVAL_S,
    VARIANTS,
    machines_in,
)


def train_row(data: Path, out: Path, row: str, machine: str, threads: int, extra: dict[str, Any]) -> Path:
    """The trained bundle of a family (or a training variant) on ``machine``: reused when already there and
    trained with the cross-fitting folds the row trains with today (a bundle from before cross-fitting was the
    default has none, and recalibrating keeps a bundle's folds: it would stay validation-only)."""
    from training.config import TrainConfig
    from training.crossfit import kept_with_folds
    from training.pipeline import train_bundle

    fleet = row in FLEETS
    home = out / "bundles" / ("fleet" if fleet else machine)
    bundle = home / row / "eval"
    family, overrides, training = (FLEETS[row], {}, {}) if fleet else VARIANTS.get(row, (row, {}, {}))
    config = TrainConfig(
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
    if kept_with_folds(bundle, config.calibration.cross_fit_folds):
        return bundle
    if bundle.exists():
        print(
            f"{machine} {row}: the kept bundle is incomplete or has other cross-fitting folds; training it again",
            flush=True,
        )
        shutil.rmtree(bundle)
    return train_bundle(config)


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
        bundle = recalibrate_bundle(  # with the bundle's own cross-fitting folds unless the row names some
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


def run_jobs(args: argparse.Namespace, machines: list[str]) -> None:
    """The machines dealt round-robin to ``args.jobs`` processes of this script, one thread each (on 2 cores two
    single-threaded trainings finish sooner than one on two threads); a fleet's bundle is trained first, here,
    so that no two processes train it at once."""
    extra = json.loads(args.hyperparameters)
    for row in args.families.split(","):
        base = CALIBRATIONS.get(row, (row, {}, {}))[0]
        if base in FLEETS:
            train_row(args.data, args.out, base, machines[0], args.threads, extra)
    common = [
        "--families", args.families, "--data", str(args.data), "--out", str(args.out),
        "--threads", "1", "--hyperparameters", args.hyperparameters, "--no-report",
        *(["--force"] if args.force else []), *(["--retrain"] if args.retrain else []),
    ]  # fmt: skip
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--machines", ",".join(machines[j :: args.jobs]), *common]
        )
        for j in range(min(args.jobs, len(machines)))
    ]
    failed = [p.args for p in procs if p.wait() != 0]
    if failed:
        raise SystemExit(f"{len(failed)} evaluation process(es) failed: {failed}")


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
    parser.add_argument(
        "--jobs", type=int, default=1, help="processes, each evaluating a share of the machines on 1 thread"
    )
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-report", action="store_true", help="evaluate only; leave EVALUATION.md alone")
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
        started, n_machines = time.perf_counter(), len(machines)
        if args.jobs > 1:
            run_jobs(args, machines)
            machines = []
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
        if not args.no_report:
            # The wall clock of this run, for the report: what "the whole evaluation within an hour" means.
            (args.out / "run.json").write_text(
                json.dumps(
                    {
                        "wall_s": time.perf_counter() - started,
                        "jobs": args.jobs,
                        "rows": len(families),
                        "machines": n_machines,
                        "date": time.strftime("%Y-%m-%d"),
                    }
                )
            )
    if not args.no_report:
        write_tables(args.out, ROWS, "python bench/evaluate_smd.py", args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
