"""``vigil calibrate``: new thresholds (and scoring options) for a trained bundle, without retraining (torch-free).

The validation part is rebuilt exactly as training held it out (same file, rows, fraction), scored through the
bundle's exported graph with the service's windowing, and calibrated; the new bundle version shares the graph.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

from models.manifest import ONNX_FILE, Manifest, ScoreDefinition
from models.runtime import graph_reconstruct, load_bundle
from models.scoring import F32, Reconstruct, normalise, score_series
from training.calibrate import calibrate_held_out
from training.config import CalibrationConfig, PrometheusRange, TrainingRefused
from training.crossfit import FOLDS_DIR, CrossFitError, bundle_folds, fold_file, held_out_scores
from training.data import (
    DataError,
    Split,
    arrays_sha256,
    load_parts,
    parts_sha256,
    prometheus_parts,
    split_chronological,
    training_parts,
)
from training.score_fit import ScoreOptions, fit_for_series

log = logging.getLogger(__name__)


def model_definition(definition: ScoreDefinition) -> ScoreDefinition:
    """What the model itself defines (its kind and temperature), without fitted scoring options."""
    return ScoreDefinition(kind=definition.kind, temperature=definition.temperature)


def validation_parts(
    manifest: Manifest, train_path: Path | list[Path] | None = None, prometheus_url: str | None = None
) -> list[F32]:
    """The bundle's validation rows, normalised, one array per training part: each file's held-out tail, as
    training split it (for a bundle trained from Prometheus: its range read again, from ``prometheus_url`` or
    the recorded URL)."""
    return [split.validation for split in normalised_splits(manifest, train_path, prometheus_url)]


def normalised_splits(
    manifest: Manifest, train_path: Path | list[Path] | None = None, prometheus_url: str | None = None
) -> list[Split]:
    """Each training part's training and validation rows, normalised, as training split them."""
    config = manifest.training.config
    recorded = config.get("train_path")
    if recorded is None and train_path is None and config.get("prometheus") is not None:
        prom = PrometheusRange.model_validate(config["prometheus"])
        series_parts = prometheus_parts(
            prometheus_url or prom.url,
            prom.source,
            prom.start,
            prom.end,
            manifest.window_length,
            config.get("validation_fraction", 0.2),
            prom.timeout_s,
        ).parts
        digest = arrays_sha256(series_parts)
    else:
        given: Path | list[Path]
        if train_path is not None:
            given = train_path
        elif isinstance(recorded, list):
            given = [Path(p) for p in recorded]
        elif recorded is not None:
            given = Path(recorded)
        else:
            raise DataError("the bundle records no training data; give it with --train")
        paths = training_parts(given if isinstance(given, list) else [given])
        series_parts = load_parts(paths, config.get("max_rows"))
        digest = parts_sha256(paths)
    if digest != manifest.training.data_sha256:
        # Training split it chronologically; other data's "validation part" may be rows the model trained on.
        raise DataError(
            f"the training data is not what the bundle was trained on (sha256 {digest[:12]}…, the bundle "
            f"records {manifest.training.data_sha256[:12]}…): calibrating on it could use rows the model "
            "trained on as held-out; give the same data with --train, or train anew"
        )
    out = []
    for series in series_parts:
        if series.shape[1] != manifest.n_features:
            raise DataError(
                f"{series.shape[1]} sensors in the training data, the bundle has {manifest.n_features}"
            )
        split = split_chronological(series, config.get("validation_fraction", 0.2), manifest.window_length)
        out.append(
            Split(
                train=normalise(split.train, manifest.normalisation),
                validation=normalise(split.validation, manifest.normalisation),
            )
        )
    return out


def fold_graphs(bundle_dir: Path, manifest: Manifest, folds: int, threads: int) -> list[Reconstruct]:
    """The bundle's cross-fitting graphs for ``folds`` folds: they must have been trained with that many."""
    trained = bundle_folds(manifest)
    if trained != folds:
        raise CrossFitError(
            f"the bundle was trained with {trained} cross-fitting folds, not {folds}: calibrating on {folds} "
            "folds needs `vigil train` with them"
        )
    missing = [str(fold_file(bundle_dir, f)) for f in range(folds) if not fold_file(bundle_dir, f).is_file()]
    if missing:
        raise CrossFitError(f"the bundle's cross-fitting graphs are missing: {', '.join(missing)}")
    return [graph_reconstruct(fold_file(bundle_dir, fold), threads) for fold in range(folds)]


def with_bundle_folds(calibration: CalibrationConfig, manifest: Manifest) -> CalibrationConfig:
    """``calibration`` with the bundle's own settings where it does not name them: its cross-fitting folds (a
    bundle trained without folds, or before they were the default, recalibrates as it was trained), its
    sampling interval (60 s would make a 10 s bundle's false-alert budget 6x looser), and the method, target,
    shortest incident, disturbed periods and thresholds (fixed or adaptive) its manifest records (recalibrating with another ``--score`` keeps
    them)."""
    given = calibration.model_fields_set
    recorded = manifest.training.config.get("calibration") or {}
    own: dict[str, object] = {
        key: recorded[key]
        for key in (
            "method",
            "false_alerts_per_day",
            "min_incident_points",
            "disturbed_periods",
            "thresholds",
        )
        if key not in given and key in recorded
    }
    if "cross_fit_folds" not in given:
        own["cross_fit_folds"] = bundle_folds(manifest)
    if "sampling_interval_s" not in given:
        own["sampling_interval_s"] = manifest.sampling_interval_s()
    if not own:
        return calibration
    # validated again: the rest of the calibration (disturbed_periods) must hold with the bundle's folds
    return CalibrationConfig.model_validate({**calibration.model_dump(), **own})


def recalibrate_bundle(
    bundle_dir: Path,
    calibration: CalibrationConfig,
    version: str | None = None,
    score: ScoreOptions | None = None,
    train_path: Path | None = None,
    threads: int = 0,
    prometheus_url: str | None = None,
) -> Path:
    """Write ``<models_dir>/<name>/<version>`` with thresholds (and alert policy) calibrated anew on the
    bundle's validation part, optionally with other scoring options fitted anew on it (None: the bundle's score
    definition as it is); returns the new bundle directory. Folds: those ``calibration`` names, else the
    bundle's own (``with_bundle_folds``)."""
    bundle = load_bundle(bundle_dir, "cpu", threads)
    manifest = bundle.manifest
    calibration = with_bundle_folds(calibration, manifest)
    splits = normalised_splits(manifest, train_path, prometheus_url)
    validation = [split.validation for split in splits]
    definition = manifest.score
    if score is not None:
        definition = fit_for_series(
            validation,
            manifest.window_length,
            manifest.stride,
            bundle.run,
            model_definition(manifest.score),
            score,
        )
    scores = [
        score_series(v, manifest.window_length, manifest.stride, bundle.run, definition).scores
        for v in validation
    ]
    folds = calibration.cross_fit_folds
    if folds:
        scores += held_out_scores(
            [split.train for split in splits],
            folds,
            fold_graphs(bundle_dir, manifest, folds, threads),
            manifest.window_length,
            manifest.stride,
            definition,
        )
    thresholds, policy = calibrate_held_out(scores, calibration)
    version = version or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = bundle_dir.parent / version
    if out.resolve() == bundle_dir.resolve():
        raise TrainingRefused(f"{out}: the new version must differ from the bundle's own")
    newest = max((p.name for p in bundle_dir.parent.iterdir() if (p / "manifest.json").is_file()), default="")
    if version < newest:
        # The server serves the version that sorts last (models.manifest.find_bundles): this one will not be.
        log.warning(
            "version %r sorts before %r: a server reading %s keeps serving %r (versions sort as strings)",
            version,
            newest,
            bundle_dir.parent.parent,
            newest,
        )
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(bundle_dir / manifest.onnx.file, out / ONNX_FILE)
    if (bundle_dir / FOLDS_DIR).is_dir():  # the new version can be calibrated again with the same folds
        shutil.copytree(bundle_dir / FOLDS_DIR, out / FOLDS_DIR, dirs_exist_ok=True)
    config = {**manifest.training.config, "calibration": calibration.model_dump(mode="json")}
    if score is not None:
        config["score"] = score.model_dump(mode="json")
    training = manifest.training.model_copy(update={"config": config})
    updated = manifest.model_copy(
        update={
            "version": version,
            "score": definition,
            "thresholds": thresholds,
            "alerts": policy,
            "training": training,
            "evaluation": None,
            "created_at": datetime.now(UTC).isoformat(),
        }
    )
    Manifest.model_validate(updated.model_dump()).save(out)
    return out
