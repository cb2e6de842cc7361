"""The parsers of ``vigil``'s training commands: train, evaluate, calibrate, backtest (what each does is in
``training.commands``). ``vigil`` itself lives in ``service.cli`` (serve, replay) and finds these through the
entry point group ``vigil.commands``, so the training package depends on nothing of the service and the serving
image can leave it out. Subcommands import what they need lazily: building the parser never loads torch."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from training import commands


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
    _calibration_arguments(train, keeps_bundle=False)
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
    train.set_defaults(func=commands.train, run=commands.run)

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
        default=None,
        help="seconds between points (false alerts per day); default: the bundle's own (its calibration's, "
        "else its source's step, else 60)",
    )
    evaluate.set_defaults(func=commands.evaluate, run=commands.run)

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
    _calibration_arguments(calibrate, keeps_bundle=True)
    calibrate.set_defaults(func=commands.calibrate, run=commands.run)

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
    backtest.set_defaults(func=commands.backtest, run=commands.run)


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


def _calibration_arguments(parser: argparse.ArgumentParser, keeps_bundle: bool) -> None:
    """``keeps_bundle`` (`vigil calibrate`): an option not given keeps the bundle's own setting (recorded in its
    manifest), not the default: recalibrating with another ``--score`` must not reset its false-alert budget."""
    from training.config import CalibrationConfig

    def default(value: object) -> object:
        return None if keeps_bundle else value

    parser.add_argument(
        "--score",
        default=None,
        help="scoring options as JSON, fitted on the validation part (keys of training.score_fit.ScoreOptions); "
        "train's default is smoothing at two speeds (0.1 and 0.3) with a balanced level term, "
        '\'{"smoothing_alpha": 0.1, "fast_smoothing_alpha": 0.3, "level_alpha": 0.1, "balance_level": true}\'; '
        "'{}' is the plain mean squared error; calibrate keeps the bundle's own unless given",
    )
    parser.add_argument(
        "--calibration",
        choices=["pot", "quantile"],
        default=default("pot"),
        help="point-level threshold method (default pot; calibrate: the bundle's own)",
    )
    parser.add_argument(
        "--false-alerts-per-day",
        type=float,
        default=default(1.0),
        help="choose the warning threshold and alert lifecycle (k, n, m) for at most this many alerts a day on "
        "the validation part (0: point-level thresholds only, service's lifecycle; default 1; calibrate: the "
        "bundle's own)",
    )
    parser.add_argument(
        "--sampling-interval-s",
        type=float,
        default=None,
        help="seconds between points of the data (default 60; with --prometheus, the step; `vigil calibrate`: "
        "the bundle's own)",
    )
    parser.add_argument(
        "--cross-fit-folds",
        type=int,
        default=None,
        help="also calibrate on the training part, cut into this many blocks, each scored by a model trained "
        "the same way without it (that many more trainings; 0: the validation part alone); train's default: "
        f"{CalibrationConfig().cross_fit_folds}; calibrate keeps the bundle's own (its fold graphs)",
    )
    parser.add_argument(
        "--disturbed-periods",
        type=periods_or_auto,
        default=default(0),
        help="held-out periods (the validation part and each cross-fitted block) that may hold an unlabelled "
        "incident or a drift: the false-alert budget leaves out this many periods with the most alerts beyond "
        "their share of it (periods of one length: the most alerts a day; default 0: every period counts; at most "
        "--cross-fit-folds; auto: 0 or 1, whichever pages within the target on each period set aside in turn)",
    )
    parser.add_argument(
        "--thresholds",
        choices=["fixed", "adaptive"],
        default=default("fixed"),
        help="the thresholds the false-alert budget is met with, and that the bundle serves: fixed for every "
        "stream, or adaptive (each stream's thresholds follow its own scores; the calibration replays each held-out period "
        "as a new stream; default fixed; calibrate: the bundle's own)",
    )
    parser.add_argument(
        "--critical-budget-share",
        type=float,
        default=None,
        help="the critical threshold (one point over it fires at once) as the lowest level whose one-point alerts "
        "alone spend at most this share of the false-alert budget on the held-out data (0 < share <= 1); "
        "default: the point-level tail estimate (POT at the critical risk; calibrate: the bundle's own)",
    )
    parser.add_argument(
        "--min-incident-points",
        type=int,
        default=default(3),
        help="the shortest incident, in points, the chosen lifecycle must be able to page: only lifecycles "
        "needing at most this many points over warning (k) are tried (default 3; calibrate: the bundle's own)",
    )


def periods_or_auto(text: str) -> int | str:
    """``--disturbed-periods``: a count, or "auto" (training/disturbed.py)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number of periods or 'auto', got {text!r}"
        ) from None


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
    return commands.run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
