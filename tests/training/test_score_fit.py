"""Scoring options fitted on validation windows: the statistics are what they say, and only validation is read."""

from __future__ import annotations

import numpy as np
import pytest

from models.manifest import ScoreDefinition
from models.scoring import ModelOutput, causal_average, score_windows, window_ends
from training.score_fit import ScoreOptions, fit_score_definition, scored_windows


def test_scored_windows_follow_the_parity_rule() -> None:
    series = np.arange(250 * 2, dtype=np.float32).reshape(250, 2)
    windows, spans = scored_windows(series, 100, 10)
    ends = window_ends(250, 100, 10)
    assert len(windows) == len(ends) and spans.tolist() == [100] + [10] * (len(ends) - 1)
    np.testing.assert_array_equal(windows[-1], series[ends[-1] - 99 : ends[-1] + 1])


def test_fit_standardises_each_sensor_by_its_validation_error_quantile_with_a_floor() -> None:
    rng = np.random.default_rng(0)
    windows = rng.normal(size=(40, 20, 4)).astype(np.float32)
    noise = rng.normal(size=windows.shape).astype(np.float32) * np.array(
        [1.0, 3.0, 0.1, 1e-4], dtype=np.float32
    )
    spans = np.full(40, 5)
    definition = fit_score_definition(
        windows, spans, ModelOutput(windows + noise), ScoreDefinition(), ScoreOptions(standardise="q99")
    )
    assert definition.sensor_scale is not None
    errors = np.concatenate([noise[i, -5:] ** 2 for i in range(40)])
    q99 = np.quantile(errors.astype(np.float64), 0.99, axis=0)
    floor = 0.1 * np.median(q99)
    np.testing.assert_allclose(definition.sensor_scale, np.maximum(q99, floor), rtol=1e-6)
    assert definition.sensor_scale[3] == pytest.approx(floor)  # the near-constant sensor is floored


def test_fit_level_term_centres_and_scales_the_recent_level() -> None:
    rng = np.random.default_rng(1)
    windows = (rng.normal(size=(30, 20, 3)) + np.array([0.0, 2.0, -1.0])).astype(np.float32)
    spans = np.full(30, 20)
    definition = fit_score_definition(
        windows,
        spans,
        ModelOutput(windows),
        ScoreDefinition(),
        ScoreOptions(level_alpha=0.2, level_weight=0.5),
    )
    assert definition.level is not None and definition.level.weight == 0.5
    recent = causal_average(windows, 0.2).reshape(-1, 3)
    np.testing.assert_allclose(definition.level.center, np.median(recent, axis=0), rtol=1e-5)
    assert min(definition.level.scale) >= 0.1


def test_a_balanced_level_term_has_the_reconstruction_terms_tail_on_validation() -> None:
    """With ``balance_level`` the level term's weight makes its 99th percentile over the validation points (mean
    over sensors) equal the reconstruction term's, times ``level_weight``, whatever the sensors' scales."""
    rng = np.random.default_rng(2)
    windows = (rng.normal(size=(30, 20, 3)) * np.array([1.0, 1e-3, 5.0])).astype(np.float32)
    noise = (0.05 * rng.normal(size=windows.shape)).astype(np.float32)
    spans = np.full(30, 10)
    options = ScoreOptions(level_alpha=0.2, level_weight=2.0, balance_level=True)
    definition = fit_score_definition(
        windows, spans, ModelOutput(windows + noise), ScoreDefinition(), options
    )
    level = definition.level
    assert level is not None
    recent = np.concatenate([causal_average(windows, 0.2)[i, -10:] for i in range(30)]).astype(np.float64)
    errors = np.concatenate([noise[i, -10:] ** 2 for i in range(30)]).astype(np.float64)
    level_terms = ((recent - np.asarray(level.center)) / np.asarray(level.scale)) ** 2
    weighted_tail = np.quantile(level.weight * level_terms.mean(axis=1), 0.99)
    assert weighted_tail == pytest.approx(2.0 * np.quantile(errors.mean(axis=1), 0.99), rel=1e-4)
    unbalanced = fit_score_definition(
        windows, spans, ModelOutput(windows + noise), ScoreDefinition(), ScoreOptions(level_alpha=0.2)
    )
    assert unbalanced.level is not None and unbalanced.level.weight == 1.0 and level.weight < 0.1


def test_absolute_errors_score_the_absolute_error_and_level_deviation_balanced_alike() -> None:
    """With ``error`` "absolute" each sensor's term is |x - x̂| plus the weighted |level deviation|, the balance
    matches the tails of those absolute terms, and the scored window is what that formula gives."""
    rng = np.random.default_rng(3)
    windows = (rng.normal(size=(30, 20, 3)) * np.array([1.0, 1e-3, 5.0])).astype(np.float32)
    noise = (0.05 * rng.normal(size=windows.shape)).astype(np.float32)
    spans = np.full(30, 10)
    options = ScoreOptions(error="absolute", level_alpha=0.2, balance_level=True)
    definition = fit_score_definition(
        windows, spans, ModelOutput(windows + noise), ScoreDefinition(), options
    )
    level = definition.level
    assert definition.error == "absolute" and level is not None
    recent = causal_average(windows, 0.2)
    deviation = (recent - np.asarray(level.center, dtype=np.float32)) / np.asarray(
        level.scale, dtype=np.float32
    )
    scored = np.concatenate([np.abs(deviation[i, -10:]) for i in range(30)]).astype(np.float64)
    errors = np.concatenate([np.abs(noise[i, -10:]) for i in range(30)]).astype(np.float64)
    weighted_tail = np.quantile(level.weight * scored.mean(axis=1), 0.99)
    assert weighted_tail == pytest.approx(np.quantile(errors.mean(axis=1), 0.99), rel=1e-4)
    got = score_windows(windows, ModelOutput(windows + noise), definition).scores
    want = (np.abs(noise) + np.float32(level.weight) * np.abs(deviation)).mean(axis=-1)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    squared = fit_score_definition(
        windows,
        spans,
        ModelOutput(windows + noise),
        ScoreDefinition(),
        options.model_copy(update={"error": "squared"}),
    )
    assert squared.level is not None and squared.level.weight != pytest.approx(level.weight, rel=0.1)


def test_a_level_change_term_sees_a_step_inside_the_window_and_forgets_a_level_that_fills_it() -> None:
    """With ``level_baseline_alpha`` the level term is the fast causal average less the slow one, standardised
    by that difference on validation: a step halfway through a window scores at the window's end, the same
    level filling the whole window does not, and a level far from validation's does not by itself."""
    rng = np.random.default_rng(4)
    validation = (0.1 * rng.normal(size=(40, 100, 2))).astype(np.float32)
    options = ScoreOptions(level_alpha=0.1, level_baseline_alpha=0.02)
    definition = fit_score_definition(
        validation, np.full(40, 10), ModelOutput(validation), ScoreDefinition(), options
    )
    level = definition.level
    assert level is not None and level.baseline_alpha == 0.02
    difference = causal_average(validation, 0.1) - causal_average(validation, 0.02)
    scored = np.concatenate([difference[i, -10:] for i in range(40)]).astype(np.float64)
    np.testing.assert_allclose(level.center, np.median(scored, axis=0), rtol=1e-4, atol=1e-6)
    noise = (0.1 * rng.normal(size=(1, 100, 2))).astype(np.float32)
    step = noise + np.where(np.arange(100)[:, None] >= 50, np.float32(3.0), np.float32(0.0))
    filled = noise + np.float32(3.0)
    scores = {
        name: score_windows(w, ModelOutput(w), definition).scores[0, -10:].mean()
        for name, w in (("quiet", noise), ("step", step), ("filled", filled))
    }
    assert scores["step"] > 100 * scores["quiet"]
    assert scores["filled"] == pytest.approx(scores["quiet"], rel=1e-3)


def test_the_fast_average_is_weighted_to_the_slow_averages_tail_on_validation() -> None:
    """With ``fast_smoothing_alpha`` the fast average's weight makes the 99th percentile of the validation points'
    score with the fast average alone equal that with the slow one alone (level term included, as fitted)."""
    rng = np.random.default_rng(5)
    windows = (rng.normal(size=(30, 40, 3)) * np.array([1.0, 0.1, 3.0])).astype(np.float32)
    noise = (0.05 * rng.standard_t(3, size=windows.shape)).astype(np.float32)
    spans = np.full(30, 10)
    options = ScoreOptions(smoothing_alpha=0.1, fast_smoothing_alpha=0.3, level_alpha=0.1, balance_level=True)
    outputs = ModelOutput(windows + noise)
    definition = fit_score_definition(windows, spans, outputs, ScoreDefinition(), options)
    fast = definition.fast_smoothing
    assert fast is not None and fast.alpha == 0.3 and definition.level is not None

    def tail(d: ScoreDefinition) -> float:
        scores = score_windows(windows, outputs, d).scores
        return float(np.quantile(np.concatenate([scores[i, -10:] for i in range(30)]), 0.99))

    alone = definition.model_copy(update={"fast_smoothing": None})
    quick = alone.model_copy(update={"smoothing_alpha": 0.3})
    assert fast.weight * tail(quick) == pytest.approx(tail(alone), rel=1e-4)
    assert fast.weight != pytest.approx(1.0, rel=0.01)  # fitted, not left at 1
    with pytest.raises(ValueError, match="fast_smoothing_alpha"):
        ScoreOptions(fast_smoothing_alpha=0.3)


def test_default_options_leave_the_models_definition_alone() -> None:
    base = ScoreDefinition(kind="association_weighted_mse", temperature=50.0)
    windows = np.zeros((2, 10, 2), dtype=np.float32)
    fitted = fit_score_definition(windows, np.array([10, 2]), ModelOutput(windows), base, ScoreOptions())
    assert fitted == base
