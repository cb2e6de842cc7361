"""Which incidents go unpaged: event recall by the length of the labelled event, pooled over the machines.

    .venv/bin/python -m bench.event_lengths --rows tvnet+smooth2_blevel,convtimenet+smooth2_blevel [--machines ...]

Reads the calibrated bundles `bench/evaluate_smd.py` left under ``artifacts/eval/bundles`` (run it first),
replays each machine's test scores through the reference lifecycle with the bundle's fixed thresholds and with
per-stream (adaptive) thresholds, exactly as the evaluation does, and counts the labelled events each alert
overlaps by length class (points; SMD is one point a minute); then, per row, how high the events the fixed
thresholds miss score against the warning threshold (under it: no lifecycle could page them), and how far above
the warning threshold the critical one sits (one point over it fires at once). A diagnostic of where the misses
are: the thresholds are the bundles' own, calibrated without test data; nothing here chooses a setting.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.smd_rows import machines_in, row_bundle  # noqa: E402
from models.lifecycle import AlertSpan, replay_series  # noqa: E402
from models.runtime import load_bundle  # noqa: E402
from training.alert_metrics import event_runs  # noqa: E402
from training.data import load_labels  # noqa: E402
from training.evaluate import alert_levels, score_test_series  # noqa: E402

EDGES = (1, 5, 20, 100)  # classes [1, 5), [5, 20), [20, 100), [100, inf): fixed before any count was seen


@dataclass(frozen=True)
class LengthClass:
    low: int  # shortest length in the class, in points
    high: int | None  # one past the longest (None: unbounded)
    events: int
    detected: int

    @property
    def label(self) -> str:
        return f"{self.low}+" if self.high is None else f"{self.low}-{self.high - 1}"

    @property
    def recall(self) -> float:
        return self.detected / self.events if self.events else float("nan")


def paged(spans: list[AlertSpan], start: int, end: int) -> bool:
    """A firing span overlaps the event ``[start, end)``."""
    return any(s.start < end and s.end > start for s in spans)


def recall_by_length(
    spans: list[AlertSpan], labels: npt.ArrayLike, edges: tuple[int, ...] = EDGES
) -> list[LengthClass]:
    """Labelled events (maximal runs of 1s) and those a firing span overlaps, per length class: the classes are
    ``[edges[i], edges[i+1])`` and the last one is unbounded."""
    bounds = [*edges[1:], None]
    events = [0] * len(edges)
    detected = [0] * len(edges)
    for start, end in event_runs(labels):
        i = next(j for j, high in enumerate(bounds) if high is None or end - start < high)
        events[i] += 1
        detected[i] += paged(spans, start, end)
    return [
        LengthClass(low, high, n, d) for low, high, n, d in zip(edges, bounds, events, detected, strict=True)
    ]


PEAK_EDGES = (0.0, 0.5, 0.8, 1.0)  # missed events by peak score over the warning threshold: fixed with EDGES
TAIL = 5  # points after an event still counted as its own (a smoothed score peaks after the anomaly)


@dataclass(frozen=True)
class MissedEvent:
    start: int
    length: int  # points
    peak: float  # its highest score, from its first point to ``tail`` after its last, over warning (NaN: unscored)
    over: int  # points over warning in that stretch


def missed_peaks(
    scores: npt.ArrayLike, labels: npt.ArrayLike, spans: list[AlertSpan], warning: float, tail: int = TAIL
) -> list[MissedEvent]:
    """Each labelled event no firing span overlaps, with how high it scored against ``warning``. A peak under
    1 is an incident no lifecycle or critical level at this warning threshold could page: only a lower
    threshold or a better score would."""
    values = np.asarray(scores, dtype=np.float64)
    out = []
    for start, end in event_runs(labels):
        if paged(spans, start, end):
            continue
        around = values[start : end + tail]
        around = around[np.isfinite(around)]
        peak = float(around.max()) / warning if around.size else float("nan")
        out.append(MissedEvent(start, end - start, peak, int((around >= warning).sum())))
    return out


def peak_classes(missed: list[MissedEvent], short_below: int = EDGES[1]) -> list[tuple[str, int, int]]:
    """(label, missed events, of them shorter than ``short_below`` points) per class of peak over warning."""
    bounds = [*PEAK_EDGES[1:], math.inf]
    rows = []
    for low, high in zip(PEAK_EDGES, bounds, strict=True):
        inside = [e.length for e in missed if low <= e.peak < high]
        label = f">= {low:g}" if math.isinf(high) else f"{low:g}-{high:g}"
        rows.append((label, len(inside), sum(length < short_below for length in inside)))
    return rows


def pooled(classes: list[list[LengthClass]]) -> list[LengthClass]:
    """Counts summed class by class over several series (same edges)."""
    return [
        LengthClass(group[0].low, group[0].high, sum(c.events for c in group), sum(c.detected for c in group))
        for group in zip(*classes, strict=True)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", required=True)
    parser.add_argument("--machines", default=None)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "smd")
    parser.add_argument("--out", type=Path, default=ROOT / "artifacts" / "eval")
    parser.add_argument(
        "--missed", action="store_true", help="also list each event the fixed thresholds miss"
    )
    args = parser.parse_args()
    machines = args.machines.split(",") if args.machines else machines_in(args.data)
    columns = ["row", "thresholds", *(f"{c.label} points" for c in recall_by_length([], np.zeros(0))), "all"]
    print("| " + " | ".join(columns) + " |")
    print("|---" * len(columns) + "|")
    summary: list[str] = []
    details: list[str] = []
    for row in args.rows.split(","):
        found: dict[str, list[list[LengthClass]]] = {"fixed": [], "adaptive": []}
        ratios: list[float] = []  # critical over warning threshold, per machine
        missed: list[MissedEvent] = []  # events the fixed thresholds miss
        for machine in machines:
            bundle_dir = row_bundle(args.out, row, machine)
            if not (bundle_dir / "manifest.json").exists():
                print(f"{row}: no bundle for {machine}", file=sys.stderr)
                continue
            bundle = load_bundle(bundle_dir, "cpu", 2)
            t = bundle.manifest.thresholds
            ratios.append(t.critical / t.warning)
            scored = score_test_series(bundle, args.data / "test" / f"{machine}.txt.gz")
            labels = load_labels(args.data / "test_label" / f"{machine}.txt.gz", n_rows=scored.scores.size)
            for mode, kept in found.items():
                spans = replay_series(scored.scores, alert_levels(bundle.manifest, mode))
                kept.append(recall_by_length(spans, labels))
                if mode == "fixed":
                    found_here = missed_peaks(scored.scores, labels, spans, t.warning)
                    missed.extend(found_here)
                    if args.missed:
                        for e in found_here:
                            details.append(
                                f"{row} {machine}: missed event at point {e.start}, {e.length} points, peak "
                                f"{e.peak:.2f}x warning, {e.over} points over it"
                            )
        for mode, kept in found.items():
            if not kept:
                continue
            classes = pooled(kept)
            total = LengthClass(1, None, sum(c.events for c in classes), sum(c.detected for c in classes))
            cells = [f"{c.detected}/{c.events} ({c.recall:.2f})" for c in [*classes, total]]
            print(f"| {row} | {mode} | " + " | ".join(cells) + " |")
        if missed:
            peaks = ", ".join(f"{label}: {n} ({short} short)" for label, n, short in peak_classes(missed))
            summary.append(
                f"{row}: events the fixed thresholds miss, by peak score (to {TAIL} points after) over the "
                f"warning threshold: {peaks}; short = under {EDGES[1]} points"
            )
        if ratios:
            summary.append(
                f"{row}: critical / warning threshold {min(ratios):.1f} to {max(ratios):.1f} over "
                f"{len(ratios)} machines, median {statistics.median(ratios):.1f}"
            )
    print("\n" + "\n".join(summary))
    if details:
        print("\n" + "\n".join(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
