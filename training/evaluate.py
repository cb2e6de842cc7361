"""``vigil evaluate``: score an untouched test series offline through the bundle's ONNX graph (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.lifecycle import LevelThresholds
from models.manifest import AlertPolicy, Manifest
from models.runtime import LoadedBundle, load_bundle
from models.scoring import SeriesScores, normalise, score_series
from training.alert_metrics import alert_ceiling, evaluate_alerts
from training.data import DataError, load_labels, load_table
from training.metrics import evaluate_scores, parse_interpretation_labels


def score_test_series(bundle: LoadedBundle, path: Path) -> SeriesScores:
    """Per-point scores of a raw test series ``[T, C]``, exactly as the service would stream them."""
    manifest = bundle.manifest
    table = load_table(path)
    series = table.values
    if series.shape[1] != manifest.n_features:
        raise DataError(f"{path}: {series.shape[1]} sensors, the model expects {manifest.n_features}")
    if table.names is not None and table.names != manifest.feature_names:
        raise DataError(
            f"{path}: the header names {', '.join(table.names)}; the model's sensors, in order, are "
            f"{', '.join(manifest.feature_names)}"
        )
    return score_series(
        normalise(series, manifest.normalisation),
        manifest.window_length,
        manifest.stride,
        bundle.run,
        manifest.score,
    )


def alert_levels(manifest: Manifest, thresholds: str | None = None) -> LevelThresholds:
    """The bundle's thresholds and alert policy (the service's default policy for bundles without one), with
    ``thresholds`` ("fixed" or "adaptive") replacing the policy's choice when given."""
    policy = manifest.alerts or AlertPolicy()
    if thresholds is not None:
        policy = policy.model_copy(update={"thresholds": thresholds})
    t = manifest.thresholds
    return LevelThresholds(t.warning, t.critical, policy, t.baseline)


def evaluate_bundle(
    bundle_dir: Path,
    test_path: Path,
    labels_path: Path,
    interpretation_path: Path | None = None,
    threads: int = 0,
    report: bool = False,
    sampling_interval_s: float | None = None,
) -> dict[str, Any]:
    """Threshold-free, at-threshold and alert-level metrics of a bundle on labelled test data (thresholds
    never see it). Alerts come from the reference lifecycle with fixed and with per-stream thresholds.
    ``sampling_interval_s``: None for the bundle's own (``Manifest.sampling_interval_s``)."""

    bundle = load_bundle(bundle_dir, "cpu", threads)
    if sampling_interval_s is None:
        sampling_interval_s = bundle.manifest.sampling_interval_s()
    scored = score_test_series(bundle, test_path)
    labels = load_labels(labels_path, n_rows=scored.scores.shape[0])
    segments = parse_interpretation_labels(interpretation_path.read_text()) if interpretation_path else None
    detection = evaluate_scores(
        scored.scores,
        labels,
        bundle.manifest.thresholds.warning,
        contributions=scored.contributions if segments else None,
        segments=segments,
    )
    if report:
        from training.report import write_evaluation_report

        write_evaluation_report(bundle_dir, bundle.manifest, scored.scores, labels, test_path.name)
    return {
        "model": bundle.manifest.name,
        "version": bundle.manifest.version,
        "architecture": bundle.manifest.architecture,
        "test_path": str(test_path),
        "thresholds": {
            "warning": bundle.manifest.thresholds.warning,
            "critical": bundle.manifest.thresholds.critical,
        },
        "metrics": detection.as_dict(),
        "alerts": {
            mode: evaluate_alerts(
                scored.scores, labels, alert_levels(bundle.manifest, mode), sampling_interval_s
            ).as_dict()
            for mode in ("fixed", "adaptive")
        },
        # An oracle (threshold chosen on this test data): what the scores could reach, not a result.
        "alert_ceiling": alert_ceiling(
            scored.scores, labels, alert_levels(bundle.manifest, "fixed"), sampling_interval_s
        ).as_dict(),
        "alert_policy": (bundle.manifest.alerts or AlertPolicy()).model_dump(),
        "sampling_interval_s": sampling_interval_s,
    }
