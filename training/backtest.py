"""``vigil backtest``: what a source-backed bundle would have raised over a past range (torch-free).

The bundle's source is read from Prometheus over ``[start, end]`` (``models.prometheus.fetch_rows``: the same
rows, gaps and segments as training and the service's poller), each label value's segments are scored through
the bundle's ONNX graph with the service's windowing (``models.scoring.score_series``: every segment from its
start, as the poller restarts a stream's window after a gap), and each stream's scores go through the reference
alert lifecycle (``models.lifecycle``, equal to the service's), one state per stream across its segments.

Written to ``out_dir``: ``scores.csv`` (every scored point: stream, ts, score, level, top sensors),
``events.csv`` (every lifecycle event), ``summary.json`` (per stream and in total, with alerts a day at other
warning thresholds, to choose one before turning the model on) and ``backtest_report.png``.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.lifecycle import LevelThresholds, LifecycleEvent, StreamAlertState, advance
from models.manifest import BundleError, Manifest
from models.prometheus import PrometheusClient, fetch_rows
from models.runtime import LoadedBundle, load_bundle
from models.scoring import F32, normalise, score_series, top_contributions_rows
from models.source import format_time
from training.evaluate import alert_levels

F64 = npt.NDArray[np.float64]
LEVEL_NAMES = {"0": "normal", "1": "warning", "2": "critical"}
WHAT_IF_FACTORS = (0.5, 1.0, 2.0, 4.0)  # warning (and critical) thresholds × these, in the summary
TOP_K = 3  # sensors named per point, as the service's default VIGIL_TOP_CONTRIBUTIONS


@dataclass(frozen=True)
class StreamBacktest:
    """One stream's scored points (``ts`` [n], ``scores`` [n], ``top`` sensor names per point), the level of
    each point and the lifecycle events."""

    stream: str
    label_value: str
    n_rows: int
    n_segments: int
    ts: F64
    scores: F32
    top: list[list[tuple[str, float]]]
    levels: list[str]
    events: list[LifecycleEvent]

    def firing_spans(self, end_ts: float) -> list[tuple[float, float, str]]:
        """(first firing ts, resolving ts or ``end_ts``, highest severity) of each alert that fired."""
        spans: list[tuple[float, float, str]] = []
        opened: float | None = None
        severity = "warning"
        for event in self.events:
            if event.state == "firing" and not event.escalated:
                opened, severity = event.ts, event.severity
            elif event.state == "firing":
                severity = "critical"
            elif event.state == "resolved" and opened is not None:
                spans.append((opened, event.ts, severity))
                opened = None
        if opened is not None:
            spans.append((opened, end_ts, severity))
        return spans


@dataclass(frozen=True)
class Backtest:
    manifest: Manifest
    start: float
    end: float
    streams: list[StreamBacktest]
    what_if: dict[str, float]  # warning threshold factor -> firing alerts a day, all streams
    out_dir: Path


def backtest_bundle(
    bundle_dir: Path,
    prometheus_url: str,
    start: float,
    end: float,
    out_dir: Path,
    threads: int = 0,
    thresholds: str | None = None,
    report: bool = True,
    timeout_s: float = 30.0,
) -> Backtest:
    """Run the bundle's source over ``[start, end]`` and write what it would have raised to ``out_dir``.
    ``thresholds`` ("fixed" or "adaptive") replaces the bundle's alert policy choice when given."""
    bundle = load_bundle(bundle_dir, "cpu", threads)
    manifest = bundle.manifest
    if manifest.source is None:
        raise BundleError(f"{bundle_dir}: the bundle has no source (train it with vigil train --prometheus)")
    with PrometheusClient(prometheus_url, timeout_s) as client:
        rows = fetch_rows(client, manifest.source, start, end, require_data=True)
    levels = alert_levels(manifest, thresholds)
    streams = [
        _score_stream(bundle, levels, stream, rows.label_values[stream], segments)
        for stream, segments in rows.segments.items()
    ]
    step_days = manifest.source.step_s / 86_400.0
    days = sum(int(np.isfinite(s.scores).sum()) for s in streams) * step_days
    what_if = {
        f"{factor:g}": _alerts_per_day(streams, _scaled(levels, factor), days) for factor in WHAT_IF_FACTORS
    }
    result = Backtest(manifest, start, end, streams, what_if, out_dir)
    write_backtest(result, report)
    return result


def _score_stream(
    bundle: LoadedBundle, levels: LevelThresholds, stream: str, label_value: str, segments: list[Any]
) -> StreamBacktest:
    manifest = bundle.manifest
    names = manifest.feature_names
    ts_parts: list[F64] = []
    score_parts: list[F32] = []
    top: list[list[tuple[str, float]]] = []
    for segment in segments:
        scored = score_series(
            normalise(segment.values, manifest.normalisation),
            manifest.window_length,
            manifest.stride,
            bundle.run,
            manifest.score,
        )
        keep = np.isfinite(scored.scores)
        ts_parts.append(segment.ts[keep])
        score_parts.append(scored.scores[keep])
        if keep.any():
            index, share = top_contributions_rows(scored.contributions[keep], TOP_K)
            top.extend(
                [(names[i], float(v)) for i, v in zip(row_i, row_v, strict=True)]
                for row_i, row_v in zip(index.tolist(), share.tolist(), strict=True)
            )
    ts = np.concatenate(ts_parts) if ts_parts else np.empty(0)
    scores = np.concatenate(score_parts) if score_parts else np.empty(0, dtype=np.float32)
    points = zip(ts.tolist(), scores.tolist(), (",".join(n for n, _ in t) for t in top), strict=True)
    stepped = advance(StreamAlertState(), levels, points)
    return StreamBacktest(
        stream=stream,
        label_value=label_value,
        n_rows=sum(len(s) for s in segments),
        n_segments=len(segments),
        ts=ts,
        scores=scores,
        top=top,
        levels=[LEVEL_NAMES.get(c, "normal") for c in stepped.levels],
        events=stepped.events,
    )


def _scaled(levels: LevelThresholds, factor: float) -> LevelThresholds:
    return LevelThresholds(levels.warning * factor, levels.critical * factor, levels.policy, levels.baseline)


def _alerts_per_day(streams: list[StreamBacktest], levels: LevelThresholds, days: float) -> float:
    fired = 0
    for s in streams:
        points = zip(s.ts.tolist(), s.scores.tolist(), ("" for _ in s.scores), strict=False)
        events = advance(StreamAlertState(), levels, points).events
        fired += sum(1 for e in events if e.state == "firing" and not e.escalated)
    return fired / days if days > 0 else math.nan


def summarise(result: Backtest) -> dict[str, Any]:
    """The figures of ``summary.json``."""
    m = result.manifest
    per_stream: list[dict[str, Any]] = []
    for s in result.streams:
        spans = s.firing_spans(result.end)
        in_alert = sum(int(((s.ts >= a) & (s.ts < b)).sum()) for a, b, _ in spans)
        per_stream.append(
            {
                "stream": s.stream,
                "label_value": s.label_value,
                "rows": s.n_rows,
                "segments": s.n_segments,
                "scored_points": int(s.scores.size),
                "alerts": len(spans),
                "critical_alerts": sum(1 for _, _, severity in spans if severity == "critical"),
                "time_in_alert": in_alert / s.scores.size if s.scores.size else 0.0,
                "max_score": float(s.scores.max()) if s.scores.size else None,
            }
        )
    scored = sum(p["scored_points"] for p in per_stream)
    days = scored * (m.source.step_s if m.source else 60.0) / 86_400.0
    alerts = sum(p["alerts"] for p in per_stream)
    return {
        "model": m.name,
        "version": m.version,
        "from": format_time(result.start),
        "to": format_time(result.end),
        "step_s": m.source.step_s if m.source else None,
        "thresholds": {"warning": m.thresholds.warning, "critical": m.thresholds.critical},
        "streams": per_stream,
        "scored_points": scored,
        "stream_days": days,
        "alerts": alerts,
        "alerts_per_stream_day": alerts / days if days > 0 else None,
        "alerts_per_stream_day_by_threshold_factor": result.what_if,
    }


def write_backtest(result: Backtest, report: bool = True) -> None:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    with (out / "scores.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["stream", "ts", "time", "score", "level", "top_sensors"])
        for s in result.streams:
            for ts, score, level, top in zip(s.ts.tolist(), s.scores.tolist(), s.levels, s.top, strict=True):
                sensors = ";".join(f"{name}:{share:.3f}" for name, share in top)
                writer.writerow([s.stream, repr(ts), format_time(ts), repr(score), level, sensors])
    with (out / "events.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["stream", "state", "severity", "escalated", "started_ts", "ts", "time", "peak_score",
                         "threshold", "sensors"])  # fmt: skip
        for s in result.streams:
            for e in s.events:
                writer.writerow(
                    [s.stream, e.state, e.severity, e.escalated, repr(e.started_ts), repr(e.ts), format_time(e.ts),
                     repr(e.peak_score), repr(e.threshold), e.sensors]
                )  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summarise(result), indent=2) + "\n")
    if report:
        write_backtest_report(result)


def write_backtest_report(result: Backtest, max_streams: int = 12) -> Path:
    """Each stream's scores over time against the thresholds, firing alerts shaded (the first ``max_streams``
    streams with the most alerts)."""
    from datetime import UTC, datetime

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = result.manifest
    ranked = sorted(result.streams, key=lambda s: (-len(s.firing_spans(result.end)), s.stream))[:max_streams]
    fig, axes = plt.subplots(max(1, len(ranked)), 1, figsize=(14, 2.4 * max(1, len(ranked))), squeeze=False)
    for ax, s in zip(axes[:, 0], ranked, strict=False):
        when = [datetime.fromtimestamp(t, UTC) for t in s.ts.tolist()]
        ax.plot(when, s.scores, lw=0.6, color="#1f4e79", label="score")
        ax.axhline(m.thresholds.warning, color="#e69f00", lw=1, ls="--", label="warning")
        ax.axhline(m.thresholds.critical, color="#d55e00", lw=1, ls="--", label="critical")
        for a, b, severity in s.firing_spans(result.end):
            color = "#d55e00" if severity == "critical" else "#e69f00"
            ax.axvspan(
                datetime.fromtimestamp(a, UTC), datetime.fromtimestamp(b, UTC), color=color, alpha=0.25
            )
        positive = s.scores[np.isfinite(s.scores) & (s.scores > 0)]
        if positive.size:
            ax.set_yscale("log")
        spans = len(s.firing_spans(result.end))
        ax.set_title(
            f"{s.stream}: {s.scores.size} points, {s.n_segments} segment(s), {spans} alert(s)", fontsize=9
        )
        ax.legend(loc="upper left", fontsize=7)
    fig.suptitle(
        f"vigil backtest {m.name} {m.version}: {format_time(result.start)} .. {format_time(result.end)}",
        fontsize=10,
    )
    fig.tight_layout()
    path = result.out_dir / "backtest_report.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
