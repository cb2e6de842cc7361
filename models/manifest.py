"""The model bundle contract between the offline and the online path.

A bundle is a directory ``<models_dir>/<name>/<version>/`` holding ``model.onnx`` and ``manifest.json``.
This module is torch-free: the service imports it (and ``models.scoring``) and nothing else of the
offline code.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from models.source import PrometheusSource

MANIFEST_FILE = "manifest.json"
ONNX_FILE = "model.onnx"
FORMAT_VERSION = 1


class BundleError(ValueError):
    """A bundle that cannot be served: missing files, bad manifest, manifest and graph disagree."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Normalisation(_Frozen):
    """Per-feature affine normalisation fitted on training data only: ``z = (x - mean) / scale``."""

    mean: list[float]
    scale: list[float]

    @model_validator(mode="after")
    def _check(self) -> Normalisation:
        if len(self.mean) != len(self.scale):
            raise ValueError("normalisation mean and scale differ in length")
        if any(not math.isfinite(s) or s <= 0 for s in self.scale):
            raise ValueError("normalisation scale must be finite and > 0")
        return self


class LevelTerm(_Frozen):
    """A window's recent level relative to training, scored beside the reconstruction (models that normalise
    each window cannot see a level shift that fills it). Per sensor: the causal exponential average of the
    normalised values over the window (``alpha``), standardised by the ``center`` and ``scale`` of that average on
    validation windows, squared, times ``weight``. With ``baseline_alpha``, the level is taken relative to the
    window's own slower causal average (that alpha, also from the window's first point) instead: a level
    change inside the window, which fades once the whole window sits at the new level; ``center`` and
    ``scale`` are then those of that difference on validation."""

    alpha: float = Field(gt=0, le=1)
    center: list[float]
    scale: list[float]
    weight: float = Field(1.0, gt=0)
    baseline_alpha: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> LevelTerm:
        if len(self.center) != len(self.scale):
            raise ValueError("level term center and scale differ in length")
        if any(not math.isfinite(v) or v <= 0 for v in self.scale):
            raise ValueError("level term scale must be finite and > 0")
        return self


def check_two_speeds(slow_alpha: float | None, fast_alpha: float, field: str) -> None:
    """A fast average goes beside a slower one: ``slow_alpha`` must be given and below ``fast_alpha``."""
    if slow_alpha is None or fast_alpha <= slow_alpha:
        raise ValueError(f"{field} needs smoothing_alpha, and its alpha must be larger")


class FastSmoothing(_Frozen):
    """A second, faster causal average of each sensor's term beside the score's smoothing: the term scored is the
    larger of the slow average and ``weight`` times the fast one (``alpha``, larger than the slow one's). The slow
    average ranks sustained anomalies above noise; alone (alpha 0.1) it lets a 3-point incident through at 27 % of
    its height (1 - 0.9^3). ``weight`` is fitted on validation so that both averages have the same 99th percentile there (as
    the level term's balance): on normal data neither dominates."""

    alpha: float = Field(gt=0, le=1)
    weight: float = Field(gt=0)

    @model_validator(mode="after")
    def _check(self) -> FastSmoothing:
        if not math.isfinite(self.weight):
            raise ValueError("fast smoothing weight must be finite")
        return self


class ScoreDefinition(_Frozen):
    """How a window and its reconstruction become per-point scores (see ``models.scoring``).

    Per sensor and point: the squared reconstruction error in normalised space (its absolute value with
    ``error`` "absolute"), divided by ``sensor_scale`` when given (statistics of the validation errors), plus
    the level term when given (squared or absolute likewise), then smoothed causally
    over the window (exponential, ``smoothing_alpha``; only earlier points of the same window; with
    ``fast_smoothing``, the larger of that and a weighted faster average), then aggregated
    over sensors (mean, mean of the ``top_k`` largest, or max). A sensor's contribution is its share of the
    per-sensor terms. Everything comes from the window alone, so streaming equals offline scoring.
    """

    kind: Literal["reconstruction_mse", "association_weighted_mse"] = "reconstruction_mse"
    description: str = (
        "mean over sensors of the squared reconstruction error in normalised space; "
        "a sensor's contribution is its share of that sum"
    )
    temperature: float | None = None
    sensor_scale: list[float] | None = None
    level: LevelTerm | None = None
    smoothing_alpha: float | None = Field(None, gt=0, le=1)
    fast_smoothing: FastSmoothing | None = None
    aggregation: Literal["mean", "top_k", "max"] = "mean"
    top_k: int | None = Field(None, ge=1)
    error: Literal["squared", "absolute"] = "squared"

    @model_validator(mode="after")
    def _check(self) -> ScoreDefinition:
        if self.fast_smoothing is not None:
            check_two_speeds(self.smoothing_alpha, self.fast_smoothing.alpha, "fast_smoothing")
        if self.sensor_scale is not None and any(not math.isfinite(v) or v <= 0 for v in self.sensor_scale):
            raise ValueError("sensor_scale must be finite and > 0")
        if (self.aggregation == "top_k") != (self.top_k is not None):
            raise ValueError("top_k is set exactly when aggregation is 'top_k'")
        return self

    @model_serializer(mode="wrap")
    def _without_unused_newer_options(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """An option added after a release is written only when used, so that a bundle which does not use it
        still loads in a service of that release (manifests refuse unknown keys): rolling upgrades."""
        data: dict[str, Any] = handler(self)
        if self.fast_smoothing is None:
            data.pop("fast_smoothing", None)
        return data


class ThresholdLevel(_Frozen):
    name: str
    value: float
    method: Literal["pot", "quantile", "false_alert_rate"]
    params: dict[str, float]


class AdaptivePolicy(_Frozen):
    """Thresholds that follow each stream (``models.lifecycle``): after ``warmup_points`` of its own scores, a
    stream's thresholds sit at the same standard score of ``sqrt(score)`` in its own distribution as the
    calibrated ones sit in the validation distribution. After the warm-up the stream's mean and variance move
    with an exponential weight of half-life ``half_life_points``, learning only from points under its warning
    threshold while no alert is open (a sustained anomaly never teaches the threshold to ignore it), and the
    thresholds stay within ``[min_ratio, max_ratio]`` times the calibrated ones.

    ``min_ratio`` 0.25 (the default) lets a quiet stream's thresholds fall to a quarter of the calibrated ones;
    1 floors them at the calibrated ones (they only rise on a stream noisier than validation). On the 14 SMD machines
    (EVALUATION.md) the floor is better with the plain mean squared error (TVNet 0.77 false alerts a day instead
    of 6.3, at the recall of fixed thresholds), and following down is better with the default scoring (TVNet
    0.66 of incidents at 0.81 false alerts a day, against 0.47 at 0.49 floored)."""

    warmup_points: int = Field(200, ge=2)
    half_life_points: float = Field(1440.0, ge=1)
    min_ratio: float = Field(0.25, gt=0, le=1)
    max_ratio: float = Field(1000.0, ge=1)
    sigma_floor_ratio: float = Field(0.25, gt=0, le=1)  # of the validation std of sqrt(score)


class AlertPolicy(_Frozen):
    """The alert lifecycle of a model: k of the last n points at or over warning (or one at or over critical)
    fire; m points in a row under ``exit_ratio × warning`` resolve. ``thresholds`` says whether the levels are
    the calibrated ones for every stream (``fixed``) or follow each stream (``adaptive``)."""

    k: int = Field(3, ge=1)
    n: int = Field(5, ge=1)
    m: int = Field(10, ge=1)
    exit_ratio: float = Field(0.8, gt=0, le=1)
    thresholds: Literal["fixed", "adaptive"] = "fixed"
    adaptive: AdaptivePolicy = AdaptivePolicy()

    @model_validator(mode="after")
    def _k_within_n(self) -> AlertPolicy:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must be <= n ({self.n}): k of the last n points fire")
        return self


class ScoreBaseline(_Frozen):
    """Mean and standard deviation of ``sqrt(score)`` over the validation scores: where per-stream thresholds
    start from (see :class:`AdaptivePolicy`)."""

    root_mean: float
    root_std: float = Field(gt=0)


class AlertCalibration(_Frozen):
    """What ``--false-alerts-per-day`` chose on the held-out scores, through the reference lifecycle: the
    validation part, and with cross-fitting (``cross_fit_folds``) the training part scored by models that never
    trained on it; ``validation_alerts`` and ``validation_days`` count all of them."""

    target_per_day: float
    achieved_per_day: float
    validation_alerts: int
    validation_days: float
    sampling_interval_s: float
    candidates_tried: int
    # With ``disturbed_periods``: that many held-out periods (those with the most alerts beyond their share) left out of the
    # budget, and the rate over the periods it counted (``achieved_per_day`` counts every period).
    disturbed_periods: int = 0
    counted_per_day: float | None = None
    # With ``disturbed_periods="auto"``: by setting ("0", "1"), the alerts a day that thresholds calibrated on the
    # other periods fired on each held-out period set aside in turn (training/disturbed.py); the largest setting
    # within the target was chosen.
    disturbed_choice: dict[str, float] | None = None

    @model_serializer(mode="wrap")
    def _without_unused(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """Without periods left out, the manifest is written as before them, so that a server of an earlier
        release (which refuses fields it does not know) still loads the bundle."""
        data: dict[str, Any] = handler(self)
        if not self.disturbed_periods:
            data.pop("disturbed_periods", None)
            data.pop("counted_per_day", None)
        if self.disturbed_choice is None:
            data.pop("disturbed_choice", None)
        return data


class Thresholds(_Frozen):
    """Alert levels calibrated on held-out normal (validation) scores, never on test data."""

    warning: float
    critical: float
    levels: list[ThresholdLevel]
    validation_stats: dict[str, float]
    baseline: ScoreBaseline | None = None
    alert_calibration: AlertCalibration | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Thresholds:
        if not (math.isfinite(self.warning) and math.isfinite(self.critical)):
            raise ValueError("thresholds must be finite")
        if self.critical < self.warning:
            raise ValueError("critical threshold below warning threshold")
        return self


class ONNXInfo(_Frozen):
    file: str = ONNX_FILE
    input_name: str
    output_names: list[str]
    opset: int
    dynamic_batch: bool = True
    sha256: str


class Parity(_Frozen):
    """Max |torch - ONNX Runtime| of the reconstruction per batch size tried at export."""

    max_abs_diff: dict[str, float]
    tolerance: float
    passed: bool


class TrainingInfo(_Frozen):
    data_path: str
    data_sha256: str
    n_rows: int
    n_train_rows: int
    n_validation_rows: int
    epochs_run: int
    best_validation_loss: float
    wall_time_s: float
    ensemble_size: int = Field(1, ge=1)  # members averaged in the graph (TrainConfig.ensemble)
    # The newest points of each window hidden from the network (TrainConfig.mask_newest); 0: none.
    mask_newest: int = Field(0, ge=0)
    config: dict[str, Any]
    history: list[dict[str, float]] = Field(default_factory=list)


class Manifest(_Frozen):
    """Everything the service needs to serve a bundle, and everything a reader needs to trust it."""

    format_version: int = FORMAT_VERSION
    name: str
    version: str
    architecture: str
    hyperparameters: dict[str, Any]
    window_length: int = Field(ge=2)
    stride: int = Field(ge=1)
    n_features: int = Field(ge=1)
    feature_names: list[str]
    normalisation: Normalisation
    score: ScoreDefinition = ScoreDefinition()
    thresholds: Thresholds
    alerts: AlertPolicy | None = (
        None  # None: the service's own defaults apply (bundles before alert policies)
    )
    onnx: ONNXInfo
    parity: Parity
    training: TrainingInfo
    evaluation: dict[str, Any] | None = None
    # Where the sensors come from (bundles trained with ``vigil train --prometheus``): the service polls it.
    source: PrometheusSource | None = None
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())

    @field_validator("name")
    @classmethod
    def _name_charset(cls, value: str) -> str:
        if not value or not all(ch.isalnum() or ch in "-_." for ch in value) or len(value) > 64:
            raise ValueError("model name must be 1-64 characters of [A-Za-z0-9._-]")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.stride > self.window_length:
            raise ValueError("stride must be <= window_length")
        if len(self.feature_names) != self.n_features:
            raise ValueError("feature_names length differs from n_features")
        if len(self.normalisation.mean) != self.n_features:
            raise ValueError("normalisation length differs from n_features")
        if self.score.sensor_scale is not None and len(self.score.sensor_scale) != self.n_features:
            raise ValueError("score sensor_scale length differs from n_features")
        if self.score.level is not None and len(self.score.level.center) != self.n_features:
            raise ValueError("score level term length differs from n_features")
        if self.source is not None and self.source.feature_names != self.feature_names:
            raise ValueError(
                "the source's query names differ from feature_names (one query per sensor, in order)"
            )
        return self

    def sampling_interval_s(self) -> float:
        """Seconds between the points the bundle was calibrated on: its calibration's, else its source's step,
        else the default of one a minute."""
        calibrated = self.thresholds.alert_calibration
        if calibrated is not None:
            return calibrated.sampling_interval_s
        return self.source.step_s if self.source is not None else 60.0

    def save(self, bundle_dir: Path) -> Path:
        bundle_dir.mkdir(parents=True, exist_ok=True)
        path = bundle_dir / MANIFEST_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, bundle_dir: Path) -> Manifest:
        path = bundle_dir / MANIFEST_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise BundleError(f"{bundle_dir}: no {MANIFEST_FILE}") from exc
        except json.JSONDecodeError as exc:
            raise BundleError(f"{path}: not valid JSON ({exc})") from exc
        try:
            return cls.model_validate(raw)
        except ValueError as exc:
            raise BundleError(f"{path}: invalid manifest: {exc}") from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_versions(models_dir: Path) -> dict[str, list[Path]]:
    """The version directories of each model name under ``models_dir``, oldest first (versions sort as
    strings); names without a version are left out."""
    found: dict[str, list[Path]] = {}
    if not models_dir.is_dir():
        return found
    for name_dir in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        versions = sorted(v for v in name_dir.iterdir() if (v / MANIFEST_FILE).is_file())
        if versions:
            found[name_dir.name] = versions
    return found


def find_bundles(models_dir: Path) -> dict[str, Path]:
    """Latest version directory of each model name under ``models_dir`` (versions sort as strings)."""
    return {name: versions[-1] for name, versions in find_versions(models_dir).items()}
