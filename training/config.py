"""Typed training configuration; the resolved object is saved in the bundle's manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.manifest import AdaptivePolicy
from models.source import PrometheusSource
from training.score_fit import DEFAULT_SCORE, ScoreOptions


class CalibrationConfig(BaseModel):
    """Threshold calibration on validation scores only (never test data)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    method: Literal["pot", "quantile"] = "pot"  # point-level thresholds (critical; warning without a target)
    warning_risk: float = Field(1e-3, gt=0, lt=1)  # POT risk q, or 1 - quantile
    critical_risk: float = Field(1e-4, gt=0, lt=1)
    pot_level: float = Field(0.98, gt=0.5, lt=1)  # initial threshold quantile of the POT fit
    # Alert-level calibration: the warning threshold and lifecycle that give at most this many alerts a day on
    # the validation part (through the reference lifecycle). None: point-level warning threshold only.
    false_alerts_per_day: float | None = Field(1.0, gt=0)
    sampling_interval_s: float = Field(60.0, gt=0)  # seconds between points (SMD: one a minute)
    # Lifecycles tried: (k, n) pairs and m; exit_ratio stays fixed.
    lifecycle_grid: list[tuple[int, int]] = [(1, 1), (2, 3), (3, 5), (5, 8)]
    # The shortest incident, in points, that must be able to fire an alert: only lifecycles with k at most this
    # are tried. Validation holds no incident, so "most sensitive on validation" alone always prefers the
    # largest k (a k of n rule lets the threshold sit lowest), and a lifecycle needing 5 points over the
    # threshold cannot page an incident of 3 or 4 (a third of SMD's labelled events; EVALUATION.md).
    min_incident_points: int = Field(3, ge=1)
    resolve_grid: list[int] = [3, 6, 12]
    # At most this share of the validation time in alert, all alerts together: rejects thresholds under the
    # normal level (an alert that never closes is one alert, so the count alone would accept them). Not
    # tighter: normal data is rarely clean, and a validation tail holding an unlabelled incident or a drift
    # (SMD machines 1-3 and 1-4 spend 5 % of it far above their training level) would lift a threshold held
    # under 1 % above the whole incident, and with it above every incident of the test period
    # (EVALUATION.md, "Calibration on a validation tail that is not clean").
    max_alert_share: float = Field(0.1, gt=0, le=1)
    # The critical threshold (one point over it fires at once): None keeps the point-level tail estimate
    # (POT at critical_risk, raised where one-point alerts alone exceed the budget), which on SMD sits a median
    # 56-72 times over the warning threshold, out of reach of a short incident (EVALUATION.md, "Which incidents
    # go unpaged"). A share s: the lowest level whose one-point alerts alone spend at most s of the held-out
    # budget; the warning threshold then takes what the whole budget leaves.
    critical_budget_share: float | None = Field(None, gt=0, le=1)
    exit_ratio: float = Field(0.8, gt=0, le=1)
    # 0: thresholds from the validation part alone. F >= 2: cross-fitted (training/crossfit.py): the training part
    # is also scored, cut into F blocks, each by a model trained on every other row (F more trainings), and the
    # thresholds are calibrated on every held-out score: 5 times the normal time at F = 4 and the default 20 %
    # validation fraction, none of it scored by a model that trained on it. The default since 2026-12-06: on the
    # 14 SMD machines every family pages more incidents at fewer false alerts (EVALUATION.md, "Cross-fitted
    # calibration"). Left at its default on data too short for blocks of a window, training falls back to the
    # validation part (with a warning, and the manifest records 0); asked for explicitly, it is an error.
    cross_fit_folds: int = Field(4, ge=0, le=10)
    # Held-out periods (the validation part and each cross-fitted block: F + 1 of them per training part) that
    # may be disturbed: the alert budget leaves out this many periods with the most alerts beyond their share
    # of it (training.calibrate.AlertBudget) and counts the rest. Normal data is rarely clean: a period holding an unlabelled incident, a deploy or a drift
    # counts its alerts as false ones and lifts the thresholds for every later incident. 0 counts every
    # period (the default); it must leave at least one period counted. "auto": the bundle's own held-out periods
    # choose between 0 and 1, each set aside in turn (training/disturbed.py); the manifest records the choice.
    disturbed_periods: Annotated[int, Field(ge=0, le=10)] | Literal["auto"] = 0
    # How per-stream thresholds adapt, when a deployment switches them on (recorded in the bundle's policy).
    adaptive: AdaptivePolicy = AdaptivePolicy()
    # The thresholds the alert calibration replays, and the bundle's policy then serves: "fixed" (the calibrated
    # levels for every stream) or "adaptive" (each held-out period replayed as a stream of its own that follows
    # its own scores from its own start, as a new stream does in the service: the false-alert budget then holds
    # for per-stream thresholds, whose anchors the calibration chooses).
    thresholds: Literal["fixed", "adaptive"] = "fixed"

    @model_validator(mode="after")
    def _folds(self) -> CalibrationConfig:
        if self.cross_fit_folds == 1:
            raise ValueError(
                "cross_fit_folds must be 0 (validation only) or at least 2: one fold would train on nothing"
            )
        if self.disturbed_periods != "auto" and self.disturbed_periods > self.cross_fit_folds:
            raise ValueError(
                f"disturbed_periods {self.disturbed_periods} would leave no held-out period counted: "
                f"{self.cross_fit_folds} cross-fitting folds hold out {self.cross_fit_folds + 1} periods"
            )
        return self


class PrometheusRange(BaseModel):
    """Training data read from a Prometheus: the source's queries over ``[start, end]`` (epoch seconds). Each
    value of the source's label is one machine of a fleet; its segments (split at gaps) are the parts."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    start: float
    end: float
    source: PrometheusSource
    timeout_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> PrometheusRange:
        if self.end <= self.start:
            raise ValueError(f"the range ends ({self.end}) before it starts ({self.start})")
        return self


class TrainingRefused(ValueError):
    """Options this model cannot train with (an ensemble or hidden points for a closed-form model); nothing is
    written."""


class TrainConfig(BaseModel):
    """Everything ``vigil train`` needs; per-family defaults fill what the user leaves out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "tvnet"
    # One series, several (a fleet: one model for many machines; windows never cross files, each file's tail is
    # held out for validation) or directories of them.
    train_path: Path | list[Path] | None = None
    prometheus: PrometheusRange | None = None  # instead of files: read the sensors from a Prometheus
    out_dir: Path
    name: str | None = None  # defaults to the model family
    version: str | None = None  # defaults to a UTC timestamp
    window_length: int = Field(100, ge=2)
    stride: int = Field(10, ge=1)  # score stride of the served model
    train_stride: int | None = Field(None, ge=1)  # step between training windows
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(3, ge=1)
    validation_fraction: float = Field(0.2, gt=0, lt=0.9)
    min_scale: float = Field(1e-3, gt=0)  # floor of the per-feature scale (constant sensors in training)
    seed: int = 0
    # K > 1: K members of the architecture trained from seeds seed … seed+K-1, exported as one graph that averages
    # their reconstructions (models/ensemble.py); serving costs K times the model.
    ensemble: int = Field(1, ge=1, le=16)
    # N > 0: the newest N points of every window are hidden from the network, which learns to predict them
    # (models/masking.py); at N = stride every scored point is a forecast. 0: plain reconstruction.
    mask_newest: int = Field(0, ge=0)
    threads: int = Field(2, ge=1)
    max_rows: int | None = Field(None, ge=1)  # use only the first rows of the file (tests, quick demos)
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    calibration: CalibrationConfig = CalibrationConfig()
    score: ScoreOptions = DEFAULT_SCORE  # '{}' on the command line: the plain mean squared error
    exporter: Literal["torchscript", "dynamo"] = "torchscript"
    feature_names: list[str] | None = None
    progress: bool = True
    report: bool = True  # write training_report.png into the bundle

    def train_paths(self) -> list[Path]:
        if self.train_path is None:
            return []
        return self.train_path if isinstance(self.train_path, list) else [self.train_path]

    @model_validator(mode="after")
    def _stride_fits(self) -> TrainConfig:
        if self.stride > self.window_length:
            raise ValueError("stride must be <= window_length")
        if self.mask_newest >= self.window_length:
            raise ValueError("mask_newest must be smaller than window_length: some points must stay visible")
        if (self.train_path is None) == (self.prometheus is None):
            raise ValueError(
                "give the training data as files (train_path) or as a Prometheus range, not both"
            )
        source = self.prometheus.source if self.prometheus is not None else None
        if source is not None and self.feature_names not in (None, source.feature_names):
            raise ValueError("with a Prometheus source the feature names are the query names")
        return self


class FamilyDefaults(BaseModel):
    model_config = ConfigDict(frozen=True)

    epochs: int
    batch_size: int
    learning_rate: float
    train_stride: int


FAMILY_DEFAULTS: dict[str, FamilyDefaults] = {
    # Sized so that one SMD machine (~19k training rows) trains in about a minute on 2 CPU cores: the whole
    # 14-machine evaluation of every family stays within about an hour (bench/evaluate_smd.py).
    "tvnet": FamilyDefaults(epochs=6, batch_size=64, learning_rate=1e-3, train_stride=10),
    "convtimenet": FamilyDefaults(epochs=6, batch_size=64, learning_rate=1e-3, train_stride=20),
    "dense_ae": FamilyDefaults(epochs=8, batch_size=128, learning_rate=1e-3, train_stride=4),
    "lstm_ae": FamilyDefaults(epochs=6, batch_size=64, learning_rate=1e-3, train_stride=5),
    "pca": FamilyDefaults(epochs=1, batch_size=256, learning_rate=1e-3, train_stride=1),
    "timesnet_ad": FamilyDefaults(epochs=10, batch_size=64, learning_rate=1e-3, train_stride=10),
}


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill the per-family defaults the user did not set."""
    defaults = FAMILY_DEFAULTS.get(config.model)
    if defaults is None:
        raise ValueError(f"unknown model {config.model!r}; known: {sorted(FAMILY_DEFAULTS)}")
    filled = {
        "epochs": config.epochs or defaults.epochs,
        "batch_size": config.batch_size or defaults.batch_size,
        "learning_rate": config.learning_rate or defaults.learning_rate,
        "train_stride": config.train_stride or defaults.train_stride,
        "name": config.name or config.model,
    }
    return config.model_copy(update=filled)
