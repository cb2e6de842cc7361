"""Pictures kept in a bundle: the training report (loss curves, validation scores against the thresholds) and
the evaluation report (test scores against the thresholds, labelled anomalies shaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.manifest import Manifest

TRAINING_REPORT = "training_report.png"
EVALUATION_REPORT = "evaluation_report.png"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _draw_scores(ax, scores: npt.NDArray[np.floating], manifest: Manifest, title: str) -> None:  # type: ignore[no-untyped-def]
    finite = np.where(np.isfinite(scores), scores, np.nan)
    ax.plot(finite, lw=0.6, color="#1f4e79", label="score")
    ax.axhline(manifest.thresholds.warning, color="#e69f00", lw=1, ls="--", label="warning")
    ax.axhline(manifest.thresholds.critical, color="#d55e00", lw=1, ls="--", label="critical")
    positive = finite[np.isfinite(finite) & (finite > 0)]
    if positive.size:
        ax.set_yscale("log")
        ax.set_ylim(bottom=max(float(np.quantile(positive, 0.01)) / 2, 1e-6))
    ax.set_title(title)
    ax.set_xlabel("time step")
    ax.legend(loc="upper left", fontsize=7)


def write_training_report(
    bundle_dir: Path, manifest: Manifest, validation_scores: npt.NDArray[np.floating]
) -> Path:
    plt = _pyplot()
    fig, (loss_ax, score_ax) = plt.subplots(1, 2, figsize=(12, 3.6))
    history = manifest.training.history
    epochs = [h["epoch"] for h in history]
    if any(np.isfinite(h["train_loss"]) for h in history):
        loss_ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="training")
    loss_ax.plot(epochs, [h["validation_loss"] for h in history], marker="o", label="validation (held out)")
    loss_ax.set_title(f"{manifest.name} {manifest.version}: loss per epoch")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend(fontsize=7)
    _draw_scores(score_ax, validation_scores, manifest, "validation scores (calibration data)")
    fig.tight_layout()
    path = bundle_dir / TRAINING_REPORT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_evaluation_report(
    bundle_dir: Path,
    manifest: Manifest,
    scores: npt.NDArray[np.floating],
    labels: npt.NDArray[np.integer],
    title: str,
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(14, 3.6))
    flags = np.r_[0, np.asarray(labels, dtype=np.int8), 0]
    starts, ends = np.flatnonzero(np.diff(flags) == 1), np.flatnonzero(np.diff(flags) == -1)
    for start, end in zip(starts, ends, strict=True):
        ax.axvspan(start, end, color="#cc79a7", alpha=0.25, lw=0)
    _draw_scores(ax, scores, manifest, f"{title}: test scores, labelled anomalies shaded")
    fig.tight_layout()
    path = bundle_dir / EVALUATION_REPORT
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
