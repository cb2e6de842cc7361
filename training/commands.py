"""What each training command does once its arguments are parsed (``training.cli`` builds the parsers): train,
calibrate, evaluate and backtest, and :func:`run`, which turns the errors a user can cause into exit 2 with the
reason. Each command imports what it needs when it runs, so importing this module never loads torch."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import CalibrationConfig, PrometheusRange
    from training.score_fit import ScoreOptions


def train(args: argparse.Namespace) -> int:
    from training.config import TrainConfig, TrainingRefused
    from training.pipeline import train_bundle
    from training.score_fit import DEFAULT_SCORE

    try:
        hyper = json.loads(args.hyperparameters) if args.hyperparameters else {}
    except json.JSONDecodeError as exc:
        raise TrainingRefused(f"--hyperparameters: not a JSON object ({exc})") from exc
    if not isinstance(hyper, dict):
        raise TrainingRefused("--hyperparameters: not a JSON object")
    prometheus = _prometheus_range(args)
    if (args.train is None) == (prometheus is None):
        raise TrainingRefused("give the data with --train FILE or with --prometheus URL (not both)")
    if args.sampling_interval_s is None:
        args.sampling_interval_s = prometheus.source.step_s if prometheus else 60.0
    config = TrainConfig(
        model=args.model,
        train_path=None if args.train is None else args.train[0] if len(args.train) == 1 else args.train,
        prometheus=prometheus,
        out_dir=args.out,
        name=args.name,
        version=args.version,
        window_length=args.window,
        stride=args.stride,
        train_stride=args.train_stride,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        ensemble=args.ensemble,
        mask_newest=args.mask_newest,
        threads=args.threads,
        max_rows=args.max_rows,
        hyperparameters=hyper,
        calibration=_calibration(args),
        score=_score_options(args.score) or DEFAULT_SCORE,
        progress=not args.quiet,
        report=not args.no_report,
    )
    bundle_dir = train_bundle(config)
    print(f"bundle written: {bundle_dir}")
    if args.reload_url:
        _reload(args.reload_url, config.name or config.model, args.api_key)
    return 0


def _prometheus_range(args: argparse.Namespace) -> PrometheusRange | None:
    """The Prometheus range of ``vigil train --prometheus``: the preset's or the given queries, by, step and gap
    rule (flags over the preset's values), over --range ending at --end (default now) or --start..--end."""
    from models.source import GapRule, PrometheusSource, SourceQuery, parse_duration, parse_time
    from training.config import PrometheusRange
    from training.preset import load_preset

    if args.prometheus is None:
        if args.query or args.preset:
            raise SystemExit("vigil train: --query and --preset need --prometheus URL")
        return None
    base = load_preset(args.preset) if args.preset else None
    queries = list(base.queries) if base else []
    for item in args.query or []:
        name, sep, expr = item.partition("=")
        if not sep or not name.strip() or not expr.strip():
            raise SystemExit(f"vigil train: --query {item!r}: expected NAME=PROMQL")
        queries.append(SourceQuery(name=name.strip(), expr=expr.strip()))
    if not queries:
        raise SystemExit(
            "vigil train: --prometheus needs --preset NAME or --query NAME=PROMQL (one per sensor)"
        )
    step_s = parse_duration(args.step) if args.step else base.step_s if base else 60.0
    gap = GapRule(max_fill_steps=args.max_fill_steps) if args.max_fill_steps is not None else None
    source = PrometheusSource(
        queries=queries,
        by=args.by or (base.by if base else "instance"),
        step_s=step_s,
        gap=gap or (base.gap if base else GapRule()),
        preset=base.preset if base and not args.query else None,
    )
    end = parse_time(args.end) if args.end else time.time()
    start = parse_time(args.start) if args.start else end - parse_duration(args.range or "14d")
    return PrometheusRange(url=args.prometheus, start=start, end=end, source=source)


def _reload(url: str, name: str, api_key: str | None) -> None:
    """Ask a running service to swap in the new bundle (POST /admin/models/reload?name=…)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = httpx.post(
        f"{url.rstrip('/')}/admin/models/reload", params={"name": name}, headers=headers, timeout=120
    )
    if response.status_code != 200:
        raise SystemExit(
            f"vigil train: reload at {url} refused the bundle: {response.status_code} {response.text}"
        )
    print(f"reloaded at {url}: {response.json()['models']}")


def _calibration(args: argparse.Namespace) -> CalibrationConfig:
    """The calibration the command line asks for; without ``--cross-fit-folds``, train's default and the
    recalibrated bundle's own folds (``training.recalibrate.with_bundle_folds``)."""
    from training.config import CalibrationConfig

    given = {
        "method": args.calibration,
        "false_alerts_per_day": args.false_alerts_per_day,
        "sampling_interval_s": args.sampling_interval_s,
        "min_incident_points": args.min_incident_points,
        "disturbed_periods": args.disturbed_periods,
        "critical_budget_share": args.critical_budget_share,
        "thresholds": args.thresholds,
        "cross_fit_folds": args.cross_fit_folds,
    }
    # Only what was given: the rest is the default, or with `vigil calibrate` the bundle's own
    # (training.recalibrate.with_bundle_folds). A target of 0 means none.
    named = {key: value for key, value in given.items() if value is not None}
    if named.get("false_alerts_per_day") == 0:
        named["false_alerts_per_day"] = None
    return CalibrationConfig(**named)


def _score_options(text: str | None) -> ScoreOptions | None:
    from training.score_fit import ScoreOptions

    return ScoreOptions.model_validate_json(text) if text else None


def calibrate(args: argparse.Namespace) -> int:
    from training.recalibrate import recalibrate_bundle

    bundle_dir = recalibrate_bundle(
        args.bundle,
        _calibration(args),
        version=args.version,
        score=_score_options(args.score),
        train_path=args.train,
        threads=args.threads,
        prometheus_url=args.prometheus,
    )
    print(f"bundle written: {bundle_dir}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate_bundle

    result = evaluate_bundle(
        args.bundle,
        args.test,
        args.labels,
        args.interpretation,
        args.threads,
        args.report,
        sampling_interval_s=args.sampling_interval_s,
    )
    metrics = result["metrics"]
    print(f"model {result['model']} {result['version']} ({result['architecture']}) on {args.test}")
    for key, value in metrics.items():
        if isinstance(value, float | int):
            print(f"  {key:<28} {value:.4f}")
    print(alert_summary(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def alert_summary(result: dict[str, Any]) -> str:
    """The alert-level figures of an evaluation, as an operator would read them."""
    policy = result["alert_policy"]
    lines = [
        f"alerts through the lifecycle (k={policy['k']} of n={policy['n']}, m={policy['m']}; "
        f"{result['sampling_interval_s']:g} s between points):"
    ]
    for mode, a in result["alerts"].items():
        lines.append(
            f"  {mode + ' thresholds':<20} event recall {a['event_recall']:.2f} "
            f"({a['events_detected']}/{a['n_events']} events), false alerts/day {a['false_alerts_per_day']:.2f} "
            f"({a['n_false_alerts']} of {a['n_alerts']} alerts in {a['days']:.1f} days), median delay "
            f"{a['median_delay_points']:g} points, time in alert {a['time_in_alert']:.1%} "
            f"(labelled {a['labelled_share']:.1%}), alerts per detected event "
            f"{a['alerts_per_detected_event']:.2f}"
        )
    ceiling = result.get("alert_ceiling")
    if ceiling is not None:
        lines.append(
            f"  {'oracle threshold':<20} event recall {ceiling['event_recall']:.2f} at most "
            f"{ceiling['max_false_alerts_per_day']:g} false alert/day and time in alert <= "
            f"{ceiling['max_alert_time_ratio']:g}x labelled (chosen on this test data: what the scores allow, "
            "not a result)"
        )
    return "\n".join(lines)


def backtest(args: argparse.Namespace) -> int:
    from models.source import parse_duration, parse_time
    from training.backtest import backtest_bundle, summarise

    end = parse_time(args.to) if args.to else time.time()
    start = parse_time(args.from_) if args.from_ else end - parse_duration(args.range or "1d")
    result = backtest_bundle(
        args.bundle,
        args.prometheus,
        start,
        end,
        args.out,
        threads=args.threads,
        thresholds=args.thresholds,
        report=not args.no_report,
    )
    summary = summarise(result)
    print(f"backtest of {summary['model']} {summary['version']} from {summary['from']} to {summary['to']}:")
    for s in summary["streams"]:
        print(
            f"  {s['stream']:<32} {s['scored_points']:>7} points in {s['segments']} segment(s), "
            f"{s['alerts']} alert(s) ({s['critical_alerts']} critical), time in alert {s['time_in_alert']:.1%}"
        )
    print(
        f"  {summary['alerts']} alert(s) in {summary['stream_days']:.2f} stream-days; alerts per stream-day "
        "at the warning threshold × "
        + ", ".join(f"{k}: {v:.2f}" for k, v in summary["alerts_per_stream_day_by_threshold_factor"].items())
    )
    print(f"written: {args.out} (scores.csv, events.csv, summary.json, backtest_report.png)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run a parsed training command; a query, preset, range, bundle or data file that cannot be used, or
    settings that do not go together (a stride longer than the window, hidden points for a closed-form
    model), exit 2 with the reason."""
    from pydantic import ValidationError

    from models.manifest import BundleError
    from models.registry import UnknownHyperparameter
    from models.source import SourceError
    from training.calibrate import CalibrationError
    from training.config import TrainingRefused
    from training.crossfit import CrossFitError
    from training.data import DataError
    from training.loop import TrainingDiverged

    try:
        return int(args.func(args))
    except (
        SourceError,
        BundleError,
        DataError,
        TrainingRefused,
        CrossFitError,
        CalibrationError,
        UnknownHyperparameter,
        TrainingDiverged,  # the options a user chose (a learning rate too high): the message says which
    ) as exc:
        sys.stderr.write(f"vigil {args.command}: {exc}\n")
        return 2
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            reason = str(error["msg"]).removeprefix("Value error, ")
            sys.stderr.write(f"vigil {args.command}: {field + ': ' if field else ''}{reason}\n")
        return 2
