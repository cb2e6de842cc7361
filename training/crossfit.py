"""Cross-fitted calibration: held-out scores for the training part too, so that the alert thresholds are
calibrated on all the normal time there is instead of the validation tail alone.

A false-alert rate of one a day estimated from a validation tail of a few days rests on a handful of alerts,
and one drifting or unlabelled stretch in that tail decides the threshold (EVALUATION.md, "Cross-fitted
calibration"). Scoring the training part with the shipped model would give more time but biased scores (the
model has seen those rows). Instead the training part is cut into ``folds`` contiguous blocks; for each block a
model is trained exactly as the shipped one (same family, options, seed, normalisation and early stopping on
the same validation part) on the training rows outside that block, and scores the block it never saw. Every
score the calibration then uses comes from a model that neither trained nor stopped on it. Each fold model
sees ``1 - 1/folds`` of the training rows, a little less than the shipped model: if anything its scores are a
little higher, and the thresholds a little cautious.

The fold graphs are kept in the bundle (``calibration/fold-<j>.onnx``) so that ``vigil calibrate`` can
calibrate again with other options; the service never loads them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.manifest import ScoreDefinition
from models.scoring import F32, Reconstruct, score_series

FOLDS_DIR = "calibration"


class CrossFitError(ValueError):
    pass


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
