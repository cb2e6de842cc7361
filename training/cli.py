"""The training commands of ``vigil``: train, evaluate, calibrate, backtest. ``vigil`` itself lives in
``service.cli`` (serve, replay) and finds these through the entry point group ``vigil.commands``, so the
training package depends on nothing of the service and the serving image can leave it out. Subcommands import
what they need lazily: building the parser never loads torch."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from training.config import CalibrationConfig, PrometheusRange
    from training.score_fit import ScoreOptions


def _train(args: argparse.Namespace) -> int:
    from training.config import TrainConfig
    from training.pipeline import train_bundle
    from training.score_fit import DEFAULT_SCORE

    hyper = json.loads(args.hyperparameters) if args.hyperparameters else {}
    prometheus = _prometheus_range(args)
    if (args.train is None) == (prometheus is None):
        raise SystemExit("vigil train: give the data with --train FILE or with --prometheus URL (not both)")
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
    from training.config import CalibrationConfig

    return CalibrationConfig(
        method=args.calibration,
        false_alerts_per_day=args.false_alerts_per_day or None,
        sampling_interval_s=args.sampling_interval_s or 60.0,
        min_incident_points=args.min_incident_points,
    )


def _score_options(text: str | None) -> ScoreOptions | None:
    from training.score_fit import ScoreOptions

    return ScoreOptions.model_validate_json(text) if text else None


def _calibrate(args: argparse.Namespace) -> int:
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


def _evaluate(args: argparse.Namespace) -> int:
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


def _backtest(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    """The training commands alone (``python -m training.cli``); ``vigil`` (``service.cli``) adds them to its
    own through :func:`register`."""
    parser = argparse.ArgumentParser(prog="vigil", description="Streaming anomaly detection for sensor data")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``train``, ``evaluate``, ``calibrate`` and ``backtest`` to the ``vigil`` command (the entry point
    ``vigil.commands: training``). Building the parsers never loads torch."""
    train = sub.add_parser("train", help="train, export, calibrate and write a model bundle")
    from training.config import FAMILY_DEFAULTS  # pydantic only: building the parser never loads torch

    train.add_argument("--model", default="tvnet", choices=list(FAMILY_DEFAULTS), help="model family")
    train.add_argument(
        "--train",
        type=Path,
        default=None,
        action="append",
        help="CSV/TXT (.gz ok) or .npy, rows = time steps; give it several times, or a directory, to train one "
        "model for a fleet (windows never cross files; each file's tail is held out for validation)",
    )
    train.add_argument(
        "--out", type=Path, required=True, help="models directory; the bundle goes to OUT/NAME/VERSION"
    )
    train.add_argument("--name", default=None)
    train.add_argument("--version", default=None)
    train.add_argument("--epochs", type=int, default=None)
    train.add_argument("--window", type=int, default=100, help="window length L")
    train.add_argument("--stride", type=int, default=10, help="score stride s of the served model")
    train.add_argument("--train-stride", type=int, default=None, help="step between training windows")
    train.add_argument("--batch-size", type=int, default=None)
    train.add_argument("--lr", type=float, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--ensemble",
        type=_ensemble_size,
        default=1,
        help="K > 1: train K models from seeds seed..seed+K-1 and serve their mean reconstruction as one graph",
    )
    train.add_argument(
        "--mask-newest",
        type=int,
        default=0,
        metavar="N",
        help="hide the newest N points of every window from the network, which learns to predict them "
        "(N = --stride: every scored point is a forecast); 0: plain reconstruction",
    )
    train.add_argument("--threads", type=int, default=2)
    train.add_argument("--max-rows", type=int, default=None, help="use only the first rows of the file")
    train.add_argument("--hyperparameters", default=None, help="JSON, e.g. '{\"d_model\": 64}'")
    _source_arguments(train)
    _calibration_arguments(train)
    train.add_argument("--quiet", action="store_true")
    train.add_argument("--no-report", action="store_true", help="skip training_report.png")
    train.add_argument(
        "--reload-url",
        default=None,
        help="after writing the bundle, ask the service at this URL to hot-reload it (retraining jobs)",
    )
    train.add_argument(
        "--api-key",
        default=os.environ.get("VIGIL_RELOAD_API_KEY"),
        help="admin key for --reload-url (default: $VIGIL_RELOAD_API_KEY)",
    )
    train.set_defaults(func=_train, run=run)

    evaluate = sub.add_parser("evaluate", help="score a labelled test series offline and print metrics")
    evaluate.add_argument("--bundle", type=Path, required=True)
    evaluate.add_argument("--test", type=Path, required=True)
    evaluate.add_argument("--labels", type=Path, required=True)
    evaluate.add_argument("--interpretation", type=Path, default=None, help="SMD interpretation_label file")
    evaluate.add_argument("--threads", type=int, default=0)
    evaluate.add_argument("--json", type=Path, default=None)
    evaluate.add_argument("--report", action="store_true", help="write evaluation_report.png into the bundle")
    evaluate.add_argument(
        "--sampling-interval-s",
        type=float,
        default=60.0,
        help="seconds between points (false alerts per day)",
    )
    evaluate.set_defaults(func=_evaluate, run=run)

    calibrate = sub.add_parser(
        "calibrate", help="calibrate a trained bundle's thresholds anew, without retraining"
    )
    calibrate.add_argument("--bundle", type=Path, required=True, help="MODELS_DIR/NAME/VERSION")
    calibrate.add_argument("--version", default=None, help="the new version (default: a UTC timestamp)")
    calibrate.add_argument(
        "--train", type=Path, default=None, help="the training file, when it moved since training"
    )
    calibrate.add_argument(
        "--prometheus",
        default=None,
        metavar="URL",
        help="for a bundle trained from Prometheus: read its range from this URL (default: the recorded one)",
    )
    calibrate.add_argument("--threads", type=int, default=0)
    _calibration_arguments(calibrate)
    calibrate.set_defaults(func=_calibrate, run=run)

    backtest = sub.add_parser(
        "backtest",
        help="run a source-backed bundle over a past range: the scores and alerts it would have raised",
    )
    backtest.add_argument("--bundle", type=Path, required=True, help="MODELS_DIR/NAME/VERSION")
    backtest.add_argument("--prometheus", required=True, metavar="URL", help="e.g. http://prometheus:9090")
    backtest.add_argument("--from", dest="from_", default=None, help="RFC 3339 or epoch seconds")
    backtest.add_argument("--to", default=None, help="RFC 3339 or epoch seconds (default: now)")
    backtest.add_argument(
        "--range", default=None, help="instead of --from: how far back from --to (default 1d)"
    )
    backtest.add_argument(
        "--out", type=Path, required=True, help="directory for the scores, alerts and report"
    )
    backtest.add_argument(
        "--thresholds", choices=["fixed", "adaptive"], default=None, help="over the bundle's alert policy"
    )
    backtest.add_argument("--threads", type=int, default=0)
    backtest.add_argument("--no-report", action="store_true", help="skip backtest_report.png")
    backtest.set_defaults(func=_backtest, run=run)


def _source_arguments(train: argparse.ArgumentParser) -> None:
    group = train.add_argument_group(
        "Prometheus source (instead of --train)",
        "each query is one sensor and returns one series per value of --by (one machine of the fleet each); rows "
        "on the --step grid, short gaps filled forward, longer gaps split a machine's series. The bundle keeps "
        "the queries, so the service polls the same sensors.",
    )
    group.add_argument("--prometheus", default=None, metavar="URL", help="e.g. http://prometheus:9090")
    group.add_argument(
        "--query", action="append", default=None, metavar="NAME=PROMQL", help="one sensor; repeat, in order"
    )
    group.add_argument(
        "--preset", default=None, help="a query preset by name (deploy/presets: node-exporter) or .yaml path"
    )
    group.add_argument(
        "--by", default=None, help="the label naming a stream (default: the preset's, instance)"
    )
    group.add_argument("--step", default=None, help="grid step, e.g. 60s (default: the preset's, 60s)")
    group.add_argument(
        "--max-fill-steps",
        type=int,
        default=None,
        help="a sensor missing for at most this many steps keeps its last value (default 5); longer gaps split",
    )
    group.add_argument("--range", default=None, help="how far back from --end, e.g. 14d (default 14d)")
    group.add_argument("--start", default=None, help="RFC 3339 or epoch seconds (instead of --range)")
    group.add_argument("--end", default=None, help="RFC 3339 or epoch seconds (default: now)")


def _calibration_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--score",
        default=None,
        help="scoring options as JSON, fitted on the validation part (keys of training.score_fit.ScoreOptions); "
        "train's default is smoothing 0.1 with a balanced level term, "
        '\'{"smoothing_alpha": 0.1, "level_alpha": 0.1, "balance_level": true}\'; \'{}\' is the plain mean '
        "squared error; calibrate keeps the bundle's own unless given",
    )
    parser.add_argument(
        "--calibration", choices=["pot", "quantile"], default="pot", help="point-level threshold method"
    )
    parser.add_argument(
        "--false-alerts-per-day",
        type=float,
        default=1.0,
        help="choose the warning threshold and alert lifecycle (k, n, m) for at most this many alerts a day on "
        "the validation part (0: point-level thresholds only, service's lifecycle)",
    )
    parser.add_argument(
        "--sampling-interval-s",
        type=float,
        default=None,
        help="seconds between points of the data (default 60; with --prometheus, the step)",
    )
    parser.add_argument(
        "--min-incident-points",
        type=int,
        default=3,
        help="the shortest incident, in points, the chosen lifecycle must be able to page: only lifecycles "
        "needing at most this many points over warning (k) are tried (default 3)",
    )


def run(args: argparse.Namespace) -> int:
    """Run a parsed training command; a query, preset, range, bundle or data file that cannot be used, or
    settings that do not go together (a stride longer than the window, hidden points for a closed-form
    model), exit 2 with the reason."""
    from pydantic import ValidationError

    from models.manifest import BundleError
    from models.source import SourceError
    from training.config import TrainingRefused
    from training.data import DataError

    try:
        return int(args.func(args))
    except (SourceError, BundleError, DataError, TrainingRefused) as exc:
        sys.stderr.write(f"vigil {args.command}: {exc}\n")
        return 2
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            reason = str(error["msg"]).removeprefix("Value error, ")
            sys.stderr.write(f"vigil {args.command}: {field + ': ' if field else ''}{reason}\n")
        return 2


def _ensemble_size(text: str) -> int:
    """``--ensemble``: a whole number of members from 1 to 16 (the bound of ``TrainConfig.ensemble``)."""
    try:
        size = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= size <= 16:
        raise argparse.ArgumentTypeError(f"{size} members: give 1 to 16")
    return size


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
