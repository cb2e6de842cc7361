"""``vigil train``: data → split → scaler → windows → train → export + parity → calibrate → bundle."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from models.manifest import ONNX_FILE, Manifest, ONNXInfo, Parity, ScoreDefinition, TrainingInfo, sha256_file
from models.prometheus import redact
from models.registry import build_model
from models.runtime import graph_reconstruct
from models.scoring import F32, SeriesScores, normalise, score_series
from models.source import format_time
from training.calibrate import calibrate_held_out
from training.config import TrainConfig, TrainingRefused, resolve
from training.crossfit import CrossFitError, check_folds, fold_file, fold_training_rows, held_out_scores
from training.data import (
    arrays_sha256,
    fit_normalisation,
    load_named_parts,
    make_windows,
    parts_sha256,
    prometheus_parts,
    split_chronological,
    training_parts,
)
from training.export import ExportError, check_parity, export_onnx
from training.loop import TrainResult, seed_everything, train_module, validation_loss
from training.score_fit import fit_for_series

log = logging.getLogger(__name__)


def score_with_onnx(
    onnx_path: Path, series: F32, window_length: int, stride: int, threads: int, definition: ScoreDefinition
) -> SeriesScores:
    """Score a normalised series through the exported graph with the service's windowing."""
    return score_series(series, window_length, stride, graph_reconstruct(onnx_path, threads), definition)


@dataclass(frozen=True)
class TrainingData:
    """The parts to train on (``[T_i, C]`` each), where they came from and their fingerprint."""

    parts: list[F32]
    description: str
    sha256: str
    names: list[str] | None = None  # the files' header names, if they have one


def read_training_data(config: TrainConfig) -> TrainingData:
    """The files of ``config.train_path``, or the segments of ``config.prometheus`` (each label value's rows,
    split at gaps, label values in order)."""
    prom = config.prometheus
    if prom is None:
        paths = training_parts(config.train_paths())
        parts, names = load_named_parts(paths, config.max_rows)
        return TrainingData(parts, ",".join(str(p) for p in paths), parts_sha256(paths), names)
    fetched = prometheus_parts(
        prom.url,
        prom.source,
        prom.start,
        prom.end,
        config.window_length,
        config.validation_fraction,
        prom.timeout_s,
    )
    for skipped in fetched.skipped:
        log.warning("segment %s is too short to split into training and validation; left out", skipped)
    log.info("%d part(s) from %s: %s", len(fetched.parts), redact(prom.url), ", ".join(fetched.names))
    description = (
        f"prometheus {redact(prom.url)} {format_time(prom.start)}..{format_time(prom.end)} "
        f"by {prom.source.by} every {prom.source.step_s:g} s: {', '.join(fetched.names)}"
    )
    return TrainingData(fetched.parts, description, arrays_sha256(fetched.parts))


def recorded_config(config: TrainConfig) -> dict[str, object]:
    """The resolved config as the manifest keeps it (a Prometheus URL without its credentials)."""
    recorded: dict[str, object] = config.model_dump(mode="json")
    if config.prometheus is not None:
        recorded["prometheus"] = {
            **config.prometheus.model_dump(mode="json"),
            "url": redact(config.prometheus.url),
        }
    return recorded


def train_members(
    config: TrainConfig,
    train_windows: F32,
    validation_windows: F32 | None,
    n_features: int,
    stop_after: int | None = None,
) -> tuple[Any, dict[str, Any], TrainResult]:
    """Build and train the model; with ``config.ensemble`` K > 1, K members from seeds ``seed … seed+K-1``,
    averaged into one graph (``models.ensemble``). Returns the module, its architecture's hyper-parameters
    (each member's) and the training record (the ensemble's own validation loss; members' epochs tagged)."""
    assert config.epochs and config.batch_size and config.learning_rate
    members, results, hyperparameters = [], [], {}
    for index in range(config.ensemble):
        seed = config.seed + index
        seed_everything(seed, config.threads)
        built = build_model(config.model, config.window_length, n_features, **config.hyperparameters)
        if config.ensemble > 1 and not getattr(built.module, "trainable", True):
            raise TrainingRefused(
                f"{config.model} is fitted in closed form: every ensemble member would be the same"
            )
        fit = getattr(built.module, "fit_periods", None)
        if callable(fit):
            import torch

            fit(torch.from_numpy(train_windows))
        module = built.module
        if config.mask_newest:
            from models.masking import MaskNewest

            try:
                module = MaskNewest(module, config.mask_newest, config.window_length)
            except ValueError as exc:
                raise TrainingRefused(f"{config.model} with mask_newest: {exc}") from exc
        results.append(
            train_module(
                module,
                train_windows,
                validation_windows,
                epochs=config.epochs,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                weight_decay=config.weight_decay,
                patience=config.patience,
                seed=seed,
                progress=config.progress,
                stop_after=stop_after,
            )
        )
        members.append(module)
        hyperparameters = built.hyperparameters()
    if len(members) == 1:
        return members[0], hyperparameters, results[0]
    from models.ensemble import MeanEnsemble

    ensemble = MeanEnsemble(members).eval()
    history = [{**row, "member": float(i)} for i, r in enumerate(results) for row in r.history]
    record = TrainResult(
        epochs_run=max(r.epochs_run for r in results),
        best_validation_loss=(
            validation_loss(ensemble, validation_windows, config.batch_size)
            if validation_windows is not None
            else math.nan
        ),
        wall_time_s=sum(r.wall_time_s for r in results),
        history=history,
    )
    return ensemble, hyperparameters, record


def best_epoch(result: TrainResult) -> int:
    """The epoch whose weights training kept (lowest validation loss; with an ensemble, over its members)."""
    scored = [row for row in result.history if math.isfinite(row["validation_loss"])]
    return int(min(scored, key=lambda row: row["validation_loss"])["epoch"]) if scored else result.epochs_run


def train_fold_graphs(
    config: TrainConfig,
    train_z: list[F32],
    validation_z: list[F32],
    epochs: int,
    n_features: int,
    bundle_dir: Path,
) -> list[Path]:
    """One model per cross-fitting fold (``training.crossfit``), trained as the shipped one on every row outside
    its block (the rest of the training part and the validation part: as much data as the shipped model) for
    the shipped model's ``epochs``, exported next to the bundle's graph; returns the graphs in fold order."""
    folds = config.calibration.cross_fit_folds
    assert config.train_stride
    graphs = []
    for fold in range(folds):
        pieces = fold_training_rows(train_z, validation_z, folds, fold, config.window_length)
        windows = np.concatenate([make_windows(p, config.window_length, config.train_stride) for p in pieces])
        log.info("cross-fitting: fold %d of %d, %d training windows", fold + 1, folds, len(windows))
        module, _, _ = train_members(config, windows, None, n_features, stop_after=epochs)
        graphs.append(
            export_onnx(
                module,
                fold_file(bundle_dir, fold),
                config.window_length,
                n_features,
                exporter=config.exporter,
                output_names=getattr(module, "output_names", None),
            )
        )
    return graphs


def cross_fitting_that_fits(config: TrainConfig, train_z: list[F32]) -> TrainConfig:
    """``config`` if its cross-fitting blocks are each long enough for a window (or it has none); an explicit
    request that does not fit raises ``CrossFitError``; the default that does not fit falls back to the
    validation part alone (``cross_fit_folds`` 0, as the manifest will record it)."""
    calibration = config.calibration
    if not calibration.cross_fit_folds:
        return config
    try:
        check_folds(train_z, calibration.cross_fit_folds, config.window_length)
    except CrossFitError as error:
        if "cross_fit_folds" in calibration.model_fields_set:
            raise
        if calibration.disturbed_periods and calibration.disturbed_periods != "auto":  # auto falls back to 0
            raise CrossFitError(
                f"{error}; disturbed_periods={calibration.disturbed_periods} needs the cross-fitted blocks"
            ) from error
        log.warning("%s; calibrating on the validation part alone", error)
        fallback = calibration.model_copy(update={"cross_fit_folds": 0})
        return config.model_copy(update={"calibration": fallback})
    return config


def train_bundle(config: TrainConfig) -> Path:
    """Train, export, verify and calibrate one model; returns the bundle directory."""
    config = resolve(config)
    assert (
        config.name and config.epochs and config.batch_size and config.learning_rate and config.train_stride
    )
    seed_everything(config.seed, config.threads)
    data = read_training_data(config)
    parts = data.parts
    splits = [split_chronological(s, config.validation_fraction, config.window_length) for s in parts]
    norm = fit_normalisation(np.concatenate([split.train for split in splits]), config.min_scale)
    validation_z = [normalise(split.validation, norm) for split in splits]
    train_z = [normalise(split.train, norm) for split in splits]
    config = cross_fitting_that_fits(config, train_z)  # before the long part, not after it
    assert config.name and config.train_stride
    folds = config.calibration.cross_fit_folds
    train_windows = np.concatenate(
        [make_windows(t, config.window_length, config.train_stride) for t in train_z]
    )
    validation_windows = np.concatenate(
        [make_windows(v, config.window_length, config.train_stride) for v in validation_z]
    )
    n_features = parts[0].shape[1]
    log.info(
        "%d training windows, %d validation windows, %d sensors, %d part(s)",
        len(train_windows),
        len(validation_windows),
        n_features,
        len(parts),
    )

    module, hyperparameters, result = train_members(config, train_windows, validation_windows, n_features)

    version = config.version or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    bundle_dir = config.out_dir / config.name / version
    output_names = getattr(module, "output_names", None)
    onnx_path = export_onnx(
        module,
        bundle_dir / ONNX_FILE,
        config.window_length,
        n_features,
        exporter=config.exporter,
        output_names=output_names,
    )
    parity = check_parity(module, onnx_path, config.window_length, n_features)
    if not parity.passed:
        raise ExportError(f"ONNX Runtime differs from PyTorch: {parity.max_abs_diff} > {parity.tolerance}")

    define = getattr(module, "score_definition", None)
    reconstruct = graph_reconstruct(onnx_path, config.threads)
    definition = fit_for_series(
        validation_z,
        config.window_length,
        config.stride,
        reconstruct,
        define() if callable(define) else ScoreDefinition(),
        config.score,
    )
    validation_scores = [
        score_series(v, config.window_length, config.stride, reconstruct, definition).scores
        for v in validation_z
    ]
    calibration_scores = validation_scores
    if folds:
        graphs = train_fold_graphs(config, train_z, validation_z, best_epoch(result), n_features, bundle_dir)
        calibration_scores = validation_scores + held_out_scores(
            train_z,
            folds,
            [graph_reconstruct(path, config.threads) for path in graphs],
            config.window_length,
            config.stride,
            definition,
        )
    thresholds, policy = calibrate_held_out(calibration_scores, config.calibration)

    source = config.prometheus.source if config.prometheus else None
    names = (source.feature_names if source else None) or config.feature_names or data.names
    names = names or [f"sensor_{i + 1}" for i in range(n_features)]
    if len(names) != n_features:
        raise ValueError(f"{len(names)} feature names for {n_features} sensors")
    manifest = Manifest(
        name=config.name,
        version=version,
        architecture=config.model,
        hyperparameters=hyperparameters,
        window_length=config.window_length,
        stride=config.stride,
        n_features=n_features,
        feature_names=names,
        normalisation=norm,
        score=definition,
        thresholds=thresholds,
        alerts=policy,
        onnx=ONNXInfo(
            input_name=parity.input_name,
            output_names=parity.output_names,
            opset=parity.opset,
            sha256=sha256_file(onnx_path),
        ),
        parity=Parity(
            max_abs_diff={str(b): d for b, d in parity.max_abs_diff.items()},
            tolerance=parity.tolerance,
            passed=parity.passed,
        ),
        source=source,
        training=TrainingInfo(
            data_path=data.description,
            data_sha256=data.sha256,
            n_rows=sum(int(s.shape[0]) for s in parts),
            n_train_rows=sum(int(split.train.shape[0]) for split in splits),
            n_validation_rows=sum(int(split.validation.shape[0]) for split in splits),
            epochs_run=result.epochs_run,
            best_validation_loss=result.best_validation_loss,
            wall_time_s=result.wall_time_s,
            ensemble_size=config.ensemble,
            mask_newest=config.mask_newest,
            config=recorded_config(config),
            history=result.history,
        ),
    )
    manifest.save(bundle_dir)
    if config.report:
        from training.report import write_training_report

        write_training_report(bundle_dir, manifest, np.concatenate(validation_scores))
    return bundle_dir
