"""The rows of the SMD evaluation (bench/evaluate_smd.py): each family, its training variants, the fleet, and the
rows that recalibrate or rescore a trained graph; the metrics its tables show."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FAMILIES = ["pca", "dense_ae", "lstm_ae", "tvnet", "convtimenet", "timesnet_ad"]
SCORED_FAMILIES = ["pca", "dense_ae", "lstm_ae", "tvnet", "convtimenet"]
# Rows of the evaluation that are a family with fixed overrides: the same model, one thing changed.
VARIANTS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # TimesNet-AD with λ = 0: reconstruction-only TimesNet (plain MSE score), the control for issue 8.
    "timesnet_ad_lambda0": ("timesnet_ad", {"lambda_discrepancy": 0.0}, {}),
    # TVNet fed the globally standardised window, without the per-window normalisation (EVALUATION.md).
    "tvnet_no_window_norm": ("tvnet", {"window_norm": False}, {}),
    # ConvTimeNet ablations (issue 15). The family's default patches follow the window (20, stride 10 at
    # L = 100, models.convtimenet.auto_patches); the rows pin them so that each stays the same experiment:
    # the former fixed patches of 8 (24 tokens per channel), patches of 20 stated explicitly, the same without
    # the deformable layer, narrower, and the former default with twice the training budget.
    "convtimenet_p8": ("convtimenet", {"patch_length": 8, "patch_stride": 4}, {}),
    "convtimenet_p20": ("convtimenet", {"patch_length": 20, "patch_stride": 10}, {}),
    "convtimenet_p20_fixed": (
        "convtimenet",
        {"patch_length": 20, "patch_stride": 10, "deformable": False},
        {},
    ),
    "convtimenet_p20_d16": (
        "convtimenet",
        {"patch_length": 20, "patch_stride": 10, "d_model": 16, "d_ff": 32},
        {},
    ),
    # TVNet and ConvTimeNet restoring the level their level autoencoder predicts from all channels' levels and
    # spreads (models.layers.LevelAutoencoder, bottleneck 8 of SMD's 38 channels) instead of the window's own:
    # the level-aware architecture of issue 15.
    "tvnet_levelae": ("tvnet", {"level_bottleneck": 8}, {}),
    "convtimenet_levelae": ("convtimenet", {"level_bottleneck": 8}, {}),
    # Three members from seeds 0, 1, 2 averaged in one graph (models/ensemble.py; RandNet, Chen et al., SDM 2017).
    "tvnet_ens3": ("tvnet", {}, {"ensemble": 3}),
    "convtimenet_ens3": ("convtimenet", {}, {"ensemble": 3}),
    # The newest 10 points of every window (the served stride) hidden from the network, which learns to predict
    # them: every scored point a forecast from the 90 before it (models/masking.py).
    # ConvTimeNet exported with grouped depthwise convs, as before 2026-12-06 (the family now exports them as
    # band-matrix products): the control that shows the figures do not depend on the form.
    "convtimenet_conv": ("convtimenet", {"band_depthwise": False}, {}),
    "tvnet_mask10": ("tvnet", {}, {"mask_newest": 10}),
    "convtimenet_mask10": ("convtimenet", {}, {"mask_newest": 10}),
    # The same families from other seeds: how far one trained model's figures move with its initialisation.
    **{
        f"{family}_seed{seed}": (family, {}, {"seed": seed})
        for family in ("tvnet", "convtimenet")
        for seed in (1, 2)
    },
    # Thresholds calibrated on the validation part alone, as before cross-fitted calibration (training/crossfit.py)
    # became the default: the control for it.
    **{f"{family}_val": (family, {}, {"calibration": {"cross_fit_folds": 0}}) for family in SCORED_FAMILIES},
    "convtimenet_p8_budget2x": (
        "convtimenet",
        {"patch_length": 8, "patch_stride": 4},
        {"epochs": 12, "train_stride": 10},
    ),
}
# Scoring options (training/score_fit.py), fitted on each machine's validation part: the ablation rows.
SCORINGS: dict[str, dict[str, Any]] = {
    "smooth": {"smoothing_alpha": 0.1},
    "level": {"level_alpha": 0.1},
    "smooth_level": {"smoothing_alpha": 0.1, "level_alpha": 0.1},
    # The level term balanced against the reconstruction term on validation (ScoreOptions.balance_level).
    "blevel": {"level_alpha": 0.1, "balance_level": True},
    "smooth_blevel": {"smoothing_alpha": 0.1, "level_alpha": 0.1, "balance_level": True},
    # Two-speed smoothing (ScoreOptions.fast_smoothing_alpha): each sensor's term the larger of the slow average
    # (alpha 0.1) and a fast one (alpha 0.3, a memory of about 3 points, the shortest incident the alert
    # calibration must page), balanced on validation; alone and with the balanced level term.
    "smooth2": {"smoothing_alpha": 0.1, "fast_smoothing_alpha": 0.3},
    "smooth2_blevel": {
        "smoothing_alpha": 0.1,
        "fast_smoothing_alpha": 0.3,
        "level_alpha": 0.1,
        "balance_level": True,
    },
    # The same with a faster fast average (alpha 0.5, a memory of about 1.4 points): how much the choice of 0.3
    # matters.
    "smooth2f5_blevel": {
        "smoothing_alpha": 0.1,
        "fast_smoothing_alpha": 0.5,
        "level_alpha": 0.1,
        "balance_level": True,
    },
    "q99_smooth": {"standardise": "q99", "smoothing_alpha": 0.1},
    "median_smooth": {"standardise": "median", "smoothing_alpha": 0.1},
    "top5_smooth": {"aggregation": "top_k", "top_k": 5, "smoothing_alpha": 0.1},
    "max_smooth": {"aggregation": "max", "smoothing_alpha": 0.1},
    # Absolute instead of squared errors and level deviations (Hundman et al., KDD 2018: smoothed absolute
    # errors), with smoothing alone and with the default's balanced level term.
    "abs_smooth": {"error": "absolute", "smoothing_alpha": 0.1},
    "abs_smooth_blevel": {
        "error": "absolute",
        "smoothing_alpha": 0.1,
        "level_alpha": 0.1,
        "balance_level": True,
    },
    # The balanced level term measuring a level change inside the window (against the window's own causal
    # average with alpha 0.02, a memory of about half of SMD's 100-point window) instead of a level unlike
    # validation's: a level that moves for good stops counting once the window has filled with it.
    "smooth_clevel": {
        "smoothing_alpha": 0.1,
        "level_alpha": 0.1,
        "level_baseline_alpha": 0.02,
        "balance_level": True,
    },
}
# What `vigil train` fits by default (training.score_fit.DEFAULT_SCORE): the per-machine tables show it.
DEFAULT_SCORING = "smooth2_blevel"
CALIBRATION_CONTROLS: dict[str, dict[str, Any]] = {
    "_cal1204": {"max_alert_share": 0.01, "min_incident_points": 5},
    "_k5": {"min_incident_points": 5},
}
# Rows trained once on every machine's training file (a fleet), evaluated on each machine's test file.
FLEETS: dict[str, str] = {"tvnet_fleet": "tvnet"}
# Rows that reuse another row's trained graph with another calibration or scoring (`vigil calibrate`): no
# retraining. (base row, calibration overrides, scoring options; {} is the plain mean squared error)
CALIBRATIONS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # The point-level POT thresholds of earlier runs with the service's default lifecycle (k 3 of 5, m 10):
    # the control for the false-alert-rate calibration (issue 13).
    **{f"{family}_pot": (family, {"false_alerts_per_day": None}, {}) for family in FAMILIES},
    # Per-stream thresholds that may rise above the calibrated ones (a stream noisier than validation) but never
    # fall below them (min_ratio 1 instead of 0.25): only the adaptive columns differ from the family's row.
    **{f"{family}_floor": (family, {"adaptive": {"min_ratio": 1.0}}, {}) for family in FAMILIES},
    # Every family with the same scoring options (a fair comparison), then each option alone on the two models
    # Vigil is built around.
    **{
        f"{family}+{name}": (family, {}, SCORINGS[name])
        for name in ("smooth_level", "smooth_blevel", "smooth2_blevel")
        for family in SCORED_FAMILIES
    },
    **{
        f"{family}+{name}": (family, {}, options)
        for family in ("tvnet", "convtimenet")
        for name, options in SCORINGS.items()
        if name not in ("smooth_level", "smooth_blevel", "smooth2_blevel")
    },
    **{
        f"{fleet}+{name}": (fleet, {}, SCORINGS[name])
        for fleet in FLEETS
        for name in ("smooth_level", "smooth_blevel", "smooth2_blevel")
    },
    # Controls for the two changes to the alert calibration of 2026-12-05 (training/config.py): the calibration
    # before them (time in alert capped at 1 % of the validation part, lifecycles up to 5 of 8: `_cal1204`),
    # and the lifecycles up to 5 of 8 with today's cap (`_k5`).
    **{
        f"{family}+smooth_blevel{suffix}": (family, overrides, SCORINGS["smooth_blevel"])
        for family in SCORED_FAMILIES
        for suffix, overrides in CALIBRATION_CONTROLS.items()
    },
    **{
        f"{family}{suffix}": (family, overrides, {})
        for family in ("tvnet", "convtimenet")
        for suffix, overrides in CALIBRATION_CONTROLS.items()
    },
    # The level-aware variants with the default scoring and with smoothing alone (their own level: no level term).
    **{
        f"{variant}+{name}": (variant, {}, SCORINGS[name])
        for variant in ("tvnet_levelae", "convtimenet_levelae")
        for name in ("smooth", "smooth_blevel")
    },
    # The ensembles and the masked variants with the default scoring and with smoothing alone.
    **{
        f"{variant}+{name}": (variant, {}, SCORINGS[name])
        for variant in (
            "tvnet_ens3",
            "convtimenet_ens3",
            "tvnet_mask10",
            "convtimenet_mask10",
            "convtimenet_conv",
        )
        for name in ("smooth", "smooth_blevel")
    },
    **{
        f"{family}_seed{seed}+{name}": (f"{family}_seed{seed}", {}, SCORINGS[name])
        for family in ("tvnet", "convtimenet")
        for seed in (1, 2)
        for name in ("smooth_blevel", "smooth2_blevel")
    },
    **{
        f"{family}_val+smooth2_blevel": (f"{family}_val", {"cross_fit_folds": 0}, SCORINGS["smooth2_blevel"])
        for family in SCORED_FAMILIES
    },
    # The default with one held-out period of the five (the validation part and four cross-fitted blocks) free
    # to be disturbed: the one with the most alerts beyond its share left out of the alert budget (`disturbed_periods`).
    **{
        f"{family}+smooth2_blevel_disturbed1": (family, {"disturbed_periods": 1}, SCORINGS["smooth2_blevel"])
        for family in SCORED_FAMILIES
    },
    # The same with 0 or 1 such periods as each bundle's held-out periods choose, each set aside in turn
    # (`disturbed_periods` "auto", training/disturbed.py).
    **{
        f"{family}+smooth2_blevel_disturbed_auto": (
            family,
            {"disturbed_periods": "auto"},
            SCORINGS["smooth2_blevel"],
        )
        for family in SCORED_FAMILIES
    },
    # The default with the false-alert budget met by per-stream thresholds (`thresholds` "adaptive"): each held-out
    # period replayed as a new stream that follows its own scores; the bundle then serves them.
    **{
        f"{family}+smooth2_blevel_adaptive": (family, {"thresholds": "adaptive"}, SCORINGS["smooth2_blevel"])
        for family in SCORED_FAMILIES
    },
    # The default scoring with per-stream thresholds floored at the calibrated ones.
    **{
        f"{family}+smooth_blevel_floor": (family, {"adaptive": {"min_ratio": 1.0}}, SCORINGS["smooth_blevel"])
        for family in SCORED_FAMILIES
    },
}
ROWS = [*FAMILIES, *VARIANTS, *FLEETS, *CALIBRATIONS]
# Rows measured on request only (EVALUATION.md gives their command), so that one full run fits a working
# session on 2 cores (2.8 hours with every row, 2026-12-06): the scoring ablations that chose the default
# scoring (each option alone on TVNet and ConvTimeNet, 2026-12-04 to 12-06), the calibration controls of
# 2026-12-05 and the fleet's older scorings. Their tables in EVALUATION.md's history are from their own runs.
ABLATIONS = (
    "smooth",
    "level",
    "blevel",
    "smooth2",
    "q99_smooth",
    "median_smooth",
    "top5_smooth",
    "max_smooth",
)
ON_REQUEST = [
    *(
        f"{family}+{name}"
        for family in ("tvnet", "convtimenet")
        for name in (*ABLATIONS, "abs_smooth", "abs_smooth_blevel", "smooth_clevel", "smooth2f5_blevel")
    ),
    *(f"{family}+smooth_blevel{suffix}" for family in SCORED_FAMILIES for suffix in CALIBRATION_CONTROLS),
    *(f"{family}{suffix}" for family in ("tvnet", "convtimenet") for suffix in CALIBRATION_CONTROLS),
    *(f"{fleet}+{name}" for fleet in FLEETS for name in ("smooth_level", "smooth_blevel")),
    # `--disturbed-periods auto` chose 0, the default, on 13 of TVNet's 14 machines (EVALUATION.md, 2026-12-07).
    *(f"{family}+smooth2_blevel_disturbed_auto" for family in SCORED_FAMILIES),
]
# What one plain run evaluates: every family, the fleet and every calibration/scoring row of them (the training
# variants and their scoring rows are measured on request: --families tvnet_levelae,tvnet_levelae+smooth).
DEFAULT_ROWS = [
    *FAMILIES,
    *FLEETS,
    *(row for row, (base, _, _) in CALIBRATIONS.items() if base not in VARIANTS and row not in ON_REQUEST),
]
SAMPLING_INTERVAL_S = 60.0  # SMD: one point a minute
# The adaptive columns of every row follow each stream down and up (min_ratio 0.25, the service's default); the
# `_floor` rows floor the per-stream thresholds at the calibrated ones (min_ratio 1).
ADAPTIVE_COLUMNS: dict[str, Any] = {"adaptive": {"min_ratio": 0.25}}
ALERT_METRICS = [
    ("event_recall", "event recall"),
    ("false_alerts_per_day", "false alerts / day"),
    ("time_in_alert", "time in alert"),
    ("median_delay_points", "median delay (points)"),
    ("alerts_per_detected_event", "alerts per detected event"),
]
METRICS = [
    ("vus_pr", "VUS-PR"),
    ("auc_pr", "AUC-PR"),
    ("auc_roc", "AUC-ROC"),
    ("point_f1", "F1 (point, unadjusted)"),
    ("point_precision", "precision"),
    ("point_recall", "recall"),
    ("event_precision", "event precision"),
    ("event_recall", "event recall"),
    ("point_adjusted_f1", "PA-F1 (point-adjusted, for comparison with papers only)"),
    ("hit_rate_100", "HitRate@100%"),
    ("hit_rate_150", "HitRate@150%"),
]


def machines_in(data: Path) -> list[str]:
    """The machines of an SMD directory (its training files), in order."""
    return sorted(p.name.removesuffix(".txt.gz") for p in (data / "train").glob("machine-*.txt.gz"))


def row_bundle(out: Path, row: str, machine: str) -> Path:
    """Where ``bench/evaluate_smd.py --out OUT`` leaves a row's bundle for a machine (the fleet's under "fleet")."""
    base = CALIBRATIONS.get(row, (row, {}, {}))[0]
    return out / "bundles" / ("fleet" if base in FLEETS else machine) / base / row
