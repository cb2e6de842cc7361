"""Cross-fitted calibration: held-out scores for the training part too, so that the alert thresholds are
calibrated on all the normal time there is instead of the validation tail alone.

A false-alert rate of one a day estimated from a validation tail of a few days rests on a handful of alerts,
and one drifting or unlabelled stretch in that tail decides the threshold (EVALUATION.md, "Cross-fitted
calibration"). Scoring the training part with the shipped model would give more time but biased scores (the
model has seen those rows). Instead the training part is cut into ``folds`` contiguous blocks; for each block a
model of the same family, options, seed and normalisation is trained on every row outside that block (the
rest of the training part and the validation part: as much data as the shipped model) for the epochs the
shipped model kept, and scores the block it never saw. No held-out row chooses a fold model's weights (there is
no early stopping to do: the epoch count is the shipped model's). With the default 20 % validation fraction
and 4 folds every block is a fifth of the data, and every model, shipped or fold, trains on four fifths: the
thresholds then see every normal row of the training data, each scored by a model as strong as the shipped one
that never trained on it (K-fold cross-fitting, as in cross-conformal prediction).

The fold graphs are kept in the bundle (``calibration/fold-<j>.onnx``) so that ``vigil calibrate`` can
calibrate again with other options; the service never loads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.manifest import MANIFEST_FILE, Manifest, ScoreDefinition
from models.scoring import F32, Reconstruct, score_series

FOLDS_DIR = "calibration"


class CrossFitError(ValueError):
    pass


def bundle_folds(manifest: Manifest) -> int:
    """The cross-fitting folds a bundle was calibrated with (0: the validation part alone, as every bundle
    from before cross-fitting)."""
    return int(manifest.training.config.get("calibration", {}).get("cross_fit_folds", 0))


def kept_with_folds(bundle_dir: Path, folds: int) -> bool:
    """Whether a bundle kept on disk (an evaluation's cache) was calibrated with ``folds`` cross-fitting folds:
    recalibrating keeps a bundle's own folds, so one that differs must be trained again. (A bundle whose data
    fell back to the validation part never matches the default and is trained again each time.)"""
    return (bundle_dir / MANIFEST_FILE).is_file() and bundle_folds(Manifest.load(bundle_dir)) == folds


def fold_file(bundle_dir: Path, fold: int) -> Path:
    return bundle_dir / FOLDS_DIR / f"fold-{fold}.onnx"


def fold_bounds(n_rows: int, folds: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each of ``folds`` contiguous blocks of ``n_rows`` training rows (sizes differ by one
    at most)."""
    edges = np.linspace(0, n_rows, folds + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def outside_fold(train: F32, folds: int, fold: int, window_length: int) -> list[F32]:
    """The training rows outside block ``fold``, as the (one or two) contiguous pieces long enough to give a
    window: windows never span the held-out block."""
    start, end = fold_bounds(train.shape[0], folds)[fold]
    return [piece for piece in (train[:start], train[end:]) if piece.shape[0] >= window_length]


def fold_training_rows(
    train_parts: list[F32], validation_parts: list[F32], folds: int, fold: int, window_length: int
) -> list[F32]:
    """What fold ``fold``'s model trains on: every part's training rows outside the block, and every part's
    validation rows, as contiguous pieces (windows never span a held-out block or join two parts)."""
    pieces = [piece for train in train_parts for piece in outside_fold(train, folds, fold, window_length)]
    return [*pieces, *(v for v in validation_parts if v.shape[0] >= window_length)]


def inside_fold(train: F32, folds: int, fold: int) -> F32:
    start, end = fold_bounds(train.shape[0], folds)[fold]
    return train[start:end]


def check_folds(train_parts: list[F32], folds: int, window_length: int) -> None:
    """Every block of every part must be long enough to score at least one window."""
    for index, train in enumerate(train_parts):
        shortest = min(end - start for start, end in fold_bounds(train.shape[0], folds))
        if shortest < window_length:
            raise CrossFitError(
                f"part {index}: {train.shape[0]} training rows cut into {folds} folds leave blocks of "
                f"{shortest} rows, shorter than a window of {window_length}; use fewer folds (or none)"
            )


def held_out_scores(
    train_parts: list[F32],
    folds: int,
    reconstructs: list[Reconstruct],
    window_length: int,
    stride: int,
    definition: ScoreDefinition,
) -> list[F32]:
    """Each block of each (normalised) training part scored by the fold model that did not see it, one series
    per (fold, part), in that order: streams of their own for the alert calibration."""
    if len(reconstructs) != folds:
        raise CrossFitError(f"{len(reconstructs)} fold graphs for {folds} folds")
    return [
        score_series(inside_fold(train, folds, fold), window_length, stride, reconstruct, definition).scores
        for fold, reconstruct in enumerate(reconstructs)
        for train in train_parts
    ]
