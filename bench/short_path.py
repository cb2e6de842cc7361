"""Would a second, short path to firing page the short incidents the fixed thresholds miss? A prototype measured
before building it into the service's Lua.

    .venv/bin/python -m bench.short_path --row tvnet+smooth2_blevel [--machines ...]

`bench.event_lengths` finds that of the 49 incidents TVNet's default row misses on the 14 SMD machines, 21 do
score over the warning threshold, 16 of them shorter than 5 points, but for 1 or 2 points: too few for the
lifecycle's k of n (3 of 5), and far under the critical threshold, the one-point shortcut. Here the shortcut
needs ``ck`` of the last ``cn`` points at or over critical instead of one, and the critical threshold is the
lowest whose alerts alone spend half of the held-out false-alert budget (as ``--critical-budget-share 0.5``);
the warning threshold takes what the whole budget leaves, with the bundle's own (k, n, m). Three variants, fixed
before any test figure of them was seen: the default (POT critical, one point), ``critical-half`` (one point,
half the budget: the opt-in rule of EVALUATION.md) and ``two-of-three`` (2 of the last 3 points, half the budget).
With ``ck = cn = 1`` the state machine is the service's lifecycle for fixed thresholds (tests/test_short_path.py
checks it span for span against ``models.lifecycle``); calibration replays the cross-fitted held-out periods that
`bench.threshold_transfer` caches (run it first: ``--rules cross-fit``), and the test part is measured with
``training.alert_metrics``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.smd_rows import SAMPLING_INTERVAL_S, machines_in, row_bundle  # noqa: E402
from bench.threshold_transfer import DATA, EVAL, cached_scores, periods  # noqa: E402
from models.lifecycle import AlertSpan  # noqa: E402
from models.manifest import Manifest  # noqa: E402
from training.alert_metrics import measure_alerts  # noqa: E402
from training.calibrate import AlertBudget, _lowest_within  # noqa: E402


@dataclass(frozen=True)
class TwoPaths:
    """The lifecycle with two paths to firing: ``k`` of the last ``n`` points at or over warning, or ``ck`` of
    the last ``cn`` at or over critical; ``m`` points in a row under ``exit_ratio × warning`` resolve."""

    k: int
    n: int
    m: int
    ck: int = 1
    cn: int = 1
    exit_ratio: float = 0.8


def spans_of(scores: npt.ArrayLike, warning: float, critical: float, life: TwoPaths) -> list[AlertSpan]:
    """Firing alerts ``[firing point, resolving point)`` of one stream (NaN = unscored, skipped); a pending
    alert whose last n points are all under warning is cancelled; after a resolve the counts start afresh."""
    out: list[AlertSpan] = []
    over_warning: deque[bool] = deque(maxlen=life.n)
    over_critical: deque[bool] = deque(maxlen=life.cn)
    state, start, below = "ok", 0, 0
    for i, score in enumerate(np.asarray(scores, dtype=np.float64).tolist()):
        if math.isnan(score):
            continue
        over_warning.append(score >= warning)
        over_critical.append(score >= critical)
        if state == "firing":
            below = below + 1 if score < life.exit_ratio * warning else 0
            if below >= life.m:
                out.append(AlertSpan(start, i, False))
                state = "ok"
                over_warning.clear()
                over_critical.clear()
            continue
        if state == "ok" and score >= warning:
            state = "pending"
        if state == "pending":
            if sum(over_warning) >= life.k or sum(over_critical) >= life.ck:
                state, start, below = "firing", i, 0
            elif len(over_warning) == life.n and not any(over_warning):
                state = "ok"
    if state == "firing":
        out.append(AlertSpan(start, int(np.asarray(scores).size), False))
    return out


def calibrate(
    series: list[npt.NDArray[np.float64]],
    life: TwoPaths,
    point_critical: float,
    share: float | None,
    per_day: float = 1.0,
    max_share: float = 0.1,
) -> tuple[float, float]:
    """(warning, critical) as ``training.calibrate.calibrate_alerts`` chooses them for one lifecycle: the
    critical threshold the point-level one (raised to the budget) or, with ``share``, the lowest whose alerts
    alone spend at most that share of it; then the lowest warning within the whole budget (at most ``per_day``
    alerts a day over all periods, open at most ``max_share`` of the points)."""
    budget = AlertBudget(
        per_day=per_day,
        days=tuple(int(np.isfinite(s).sum()) * SAMPLING_INTERVAL_S / 86_400.0 for s in series),
        disturbed=0,
        max_share=max_share,
        points=sum(s.size for s in series),
    )
    finite = np.sort(np.concatenate([s[np.isfinite(s)] for s in series]))
    candidates = np.append(np.unique(finite[finite.size // 2 :]), finite[-1] * (1 + 1e-6) + 1e-12)

    def within(warning: float, critical: float, rate: float) -> bool:
        found = [spans_of(s, warning, critical, life) for s in series]
        open_points = sum(a.end - a.start for f in found for a in f)
        return replace(budget, per_day=rate).allows([len(f) for f in found], open_points)

    if share is None:
        critical = max(point_critical, float(candidates[0]))
        if not within(critical, critical, per_day):
            critical = _lowest_within(candidates[candidates >= critical], lambda c: within(c, c, per_day))
    else:
        critical = _lowest_within(candidates, lambda c: within(c, c, per_day * share))
    under = np.append(candidates[candidates < critical], critical)
    return _lowest_within(under, lambda w: within(w, critical, per_day)), critical


VARIANTS: dict[str, tuple[int, int, float | None]] = {  # ck, cn, share of the budget for the critical path
    "default": (1, 1, None),
    "critical-half": (1, 1, 0.5),
    "two-of-three": (2, 3, 0.5),
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--row", required=True)
    parser.add_argument("--machines", default=None)
    args = parser.parse_args()
    machines = args.machines.split(",") if args.machines else machines_in(DATA)
    found: dict[str, list[tuple[float, float, float]]] = {v: [] for v in VARIANTS}
    print("| machine | variant | warning | critical | event recall | false alerts / day | time in alert |")
    print("|---|---|---|---|---|---|---|")
    for machine in machines:
        bundle = row_bundle(EVAL, args.row, machine)
        if not (bundle / "manifest.json").exists():
            print(f"{args.row}: no bundle for {machine}", file=sys.stderr)
            continue
        manifest = Manifest.load(bundle)
        scores = cached_scores(args.row, machine)
        warning_level, critical_level = manifest.thresholds.levels
        point_critical = float(critical_level.params.get("raised_from", critical_level.value))
        chosen = warning_level.params
        series = [scores[p].astype(np.float64) for p in periods(scores)]
        series = [s for s in series if np.isfinite(s).any()]
        for variant, (ck, cn, share) in VARIANTS.items():
            life = TwoPaths(int(chosen["k"]), int(chosen["n"]), int(chosen["m"]), ck, cn)
            warning, critical = calibrate(series, life, point_critical, share)
            report = measure_alerts(
                spans_of(scores["test"], warning, critical, life), scores["labels"], SAMPLING_INTERVAL_S
            )
            figures = (report.event_recall, report.false_alerts_per_day, report.time_in_alert)
            found[variant].append(figures)
            print(
                f"| {machine} | {variant} | {warning:.4g} | {critical:.4g} | {figures[0]:.3f} | {figures[1]:.2f} | "
                f"{figures[2]:.3f} |"
            )
    print()
    for variant, rows in found.items():
        if rows:
            means = [statistics.mean(r[i] for r in rows) for i in range(3)]
            print(
                f"mean over {len(rows)} machines, {args.row} {variant}: event recall {means[0]:.3f}, "
                f"false alerts a day {means[1]:.2f}, time in alert {means[2]:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
