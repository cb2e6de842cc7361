"""``vigil evaluate``: score an untouched test series offline through the bundle's ONNX graph (torch-free)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from models.runtime import LoadedBundle, load_bundle
from models.scoring import SeriesScores, normalise, score_series
from training.data import load_labels, load_series
from training.metrics import evaluate_scores, parse_interpretation_labels


def score_test_series(bundle: LoadedBundle, path: Path) -> SeriesScores:
    """Per-point scores of a raw test series ``[T, C]``, exactly as the service would stream them."""
    manifest = bundle.manifest
    series = load_series(path)
    if series.shape[1] != manifest.n_features:
        raise ValueError(f"{path}: {series.shape[1]} sensors, the model expects {manifest.n_features}")
    return score_series(
        normalise(series, manifest.normalisation),
        manifest.window_length,
        manifest.stride,
        bundle.run,
        manifest.score,
    )


def evaluate_bundle(
    bundle_dir: Path,
    test_path: Path,
    labels_path: Path,
    interpretation_path: Path | None = None,
    threads: int = 0,
    report: bool = False,
) -> dict[str, Any]:
    """Threshold-free and at-threshold metrics of a bundle on labelled test data (thresholds never see it)."""
    bundle = load_bundle(bundle_dir, "cpu", threads)
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
    }
