"""The one scoring function and the parity rule's windowing."""

from __future__ import annotations

import numpy as np
import pytest

from models.manifest import ScoreDefinition
from models.scoring import (
    ModelOutput,
    level_of,
    levels_of,
    pending_points,
    score_series,
    score_windows,
    top_contributions_rows,
    window_ends,
)


def test_window_ends_follow_the_stride_from_the_first_full_window() -> None:
    assert window_ends(9, 10, 3) == []
    assert window_ends(10, 10, 3) == [9]
    assert window_ends(20, 10, 3) == [9, 12, 15, 18]
    assert window_ends(20, 10, 3, first_index=13) == [15, 18]
    assert window_ends(20, 10, 3, first_index=15) == [15, 18]


def test_pending_points_are_those_after_the_last_window_end() -> None:
    assert pending_points(5, 10, 3) == 5
    assert pending_points(10, 10, 3) == 0
    assert pending_points(12, 10, 3) == 2
    assert pending_points(13, 10, 3) == 0


def test_score_is_the_mean_squared_error_and_contributions_are_shares() -> None:
    windows = np.zeros((1, 2, 4), dtype=np.float32)
    recon = np.array([[[1, 0, 0, 1], [0, 0, 0, 0]]], dtype=np.float32)  # errors 1, 0, 0, 1 then none
    recon[0, 0, 3] = 3.0  # squared errors 1 and 9: score (1 + 9) / 4
    result = score_windows(windows, ModelOutput(recon), ScoreDefinition())
    assert result.scores[0, 0] == pytest.approx(2.5)
    np.testing.assert_allclose(result.contributions[0, 0], [0.1, 0.0, 0.0, 0.9])
    assert result.scores[0, 1] == 0.0
    np.testing.assert_allclose(result.contributions[0, 1], [0.25] * 4)  # no error: shares spread evenly


def test_score_series_scores_every_point_once_with_the_windows_newest_points() -> None:
    length, stride = 5, 2
    series = np.arange(14 * 2, dtype=np.float32).reshape(14, 2)
    calls: list[np.ndarray] = []

    def reconstruct(windows: np.ndarray) -> ModelOutput:
        calls.append(windows.copy())
        return ModelOutput(np.zeros_like(windows))  # score = mean of squared values

    result = score_series(series, length, stride, reconstruct, ScoreDefinition(), batch_size=2)
    expected = (series.astype(np.float64) ** 2).mean(axis=1)
    scored = np.isfinite(result.scores)
    assert scored.tolist() == [True] * 13 + [False]  # windows end at 4, 6, 8, 10, 12: point 13 waits
    np.testing.assert_allclose(result.scores[scored], expected[scored], rtol=1e-6)
    assert [len(c) for c in calls] == [2, 2, 1]


def test_association_weighted_scores_need_the_association_output() -> None:
    windows = np.ones((1, 3, 2), dtype=np.float32)
    definition = ScoreDefinition(kind="association_weighted_mse", temperature=50.0)
    with pytest.raises(ValueError, match="association"):
        score_windows(windows, ModelOutput(np.zeros_like(windows)), definition)
    weights = np.array([[0.5, 0.25, 0.25]], dtype=np.float32)
    result = score_windows(windows, ModelOutput(np.zeros_like(windows), weights), definition)
    np.testing.assert_allclose(result.scores, weights)


def _ranked(row: np.ndarray, k: int) -> list[int]:
    """The reference ranking: largest share first, ties in sensor order (a stable sort)."""
    return np.argsort(-row, kind="stable")[:k].tolist()


def test_levels_and_top_contributions() -> None:
    assert level_of(0.5, 1.0, 2.0) == "normal"
    assert level_of(1.0, 1.0, 2.0) == "warning"
    assert level_of(2.5, 1.0, 2.0) == "critical"
    indices, values = top_contributions_rows(np.array([[0.1, 0.5, 0.15, 0.25]], dtype=np.float32), 3)
    assert indices.tolist() == [[1, 3, 2]]
    np.testing.assert_array_equal(values, np.array([[0.5, 0.25, 0.15]], dtype=np.float32))


def test_levels_of_every_score_match_level_of_in_float64() -> None:
    rng = np.random.default_rng(3)
    scores = rng.gamma(1.0, 1.0, 500).astype(np.float32)
    warning, critical = 1.0, 2.5
    a = np.float32(1.7)
    just_above = (
        float(a) + 1e-12
    )  # rounds to ``a`` in float32: a float32 comparison would call ``a`` critical
    scores[:4] = [np.nan, warning, critical, a]
    for warn, crit in ((warning, critical), (warning, just_above), (critical, warning)):
        expected = [level_of(float(v), warn, crit) for v in scores]
        assert levels_of(scores, warn, crit) == expected
        assert levels_of(scores.tolist(), warn, crit) == expected
    assert levels_of(scores[:4], warning, just_above) == ["normal", "warning", "critical", "warning"]
    assert levels_of(np.empty(0, dtype=np.float32), warning, critical) == []


@pytest.mark.parametrize("k", [1, 3, 38, 50])
def test_top_contributions_rows_match_a_stable_sort(k: int) -> None:
    rng = np.random.default_rng(k)
    shares = rng.random((4, 50, 38)).astype(np.float32)
    shares[0, 3, [4, 9, 30]] = 1.0  # tied above every other share: sensor order
    shares[1, 7] = 1.0 / 38  # a row of equal shares (what an all-zero error row gets)
    shares[2, :, ::2] = 0.5  # half of every row tied
    before = shares.copy()
    indices, values = top_contributions_rows(shares, k)
    kept = min(k, 38)
    assert indices.shape == values.shape == (4, 50, kept) and values.dtype == np.float32
    for block, row in np.ndindex(4, 50):
        expected = _ranked(shares[block, row], kept)
        assert indices[block, row].tolist() == expected
        np.testing.assert_array_equal(values[block, row], shares[block, row, expected])
    assert indices[0, 3, :3].tolist() == [4, 9, 30][:kept] and indices[1, 7].tolist() == list(range(kept))
    np.testing.assert_array_equal(shares, before)  # the caller's array is not masked


def _random_windows(seed: int, b: int = 5, length: int = 30, c: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    windows = rng.normal(size=(b, length, c)).astype(np.float32)
    return windows, (windows + rng.normal(0, 0.3, size=windows.shape)).astype(np.float32)


def test_causal_average_uses_only_earlier_points_of_the_window() -> None:
    from models.scoring import causal_average

    values, _ = _random_windows(1)
    smoothed = causal_average(values, 0.25)
    changed = values.copy()
    changed[:, 20:] += 100.0  # later points change ...
    np.testing.assert_array_equal(
        causal_average(changed, 0.25)[:, :20], smoothed[:, :20]
    )  # ... earlier do not
    expected = values[:, 0]
    for t in range(1, 5):
        expected = np.float32(0.25) * values[:, t] + np.float32(0.75) * expected
    np.testing.assert_array_equal(smoothed[:, 4], expected)


@pytest.mark.parametrize(
    "options",
    [
        {"sensor_scale": [1.0, 2.0, 0.5, 4.0, 1.0, 3.0]},
        {"smoothing_alpha": 0.2},
        {"aggregation": "max"},
        {"aggregation": "top_k", "top_k": 2},
        {"level": {"alpha": 0.1, "center": [0.0] * 6, "scale": [1.0] * 6, "weight": 0.5}},
        {
            "sensor_scale": [1.0, 2.0, 0.5, 4.0, 1.0, 3.0],
            "smoothing_alpha": 0.1,
            "aggregation": "top_k",
            "top_k": 3,
            "level": {"alpha": 0.2, "center": [0.1] * 6, "scale": [2.0] * 6},
        },
        {"smoothing_alpha": 0.1, "fast_smoothing": {"alpha": 0.3, "weight": 0.4}},
    ],
    ids=["scale", "smooth", "max", "top_k", "level", "all", "two_speeds"],
)
def test_scoring_options_score_a_window_the_same_alone_and_in_any_batch(options: dict) -> None:
    windows, recon = _random_windows(2)
    definition = ScoreDefinition(**options)
    together = score_windows(windows, ModelOutput(recon), definition)
    for i in range(len(windows)):
        alone = score_windows(windows[i : i + 1], ModelOutput(recon[i : i + 1]), definition)
        np.testing.assert_array_equal(alone.scores[0], together.scores[i])
        np.testing.assert_array_equal(alone.contributions[0], together.contributions[i])
    np.testing.assert_allclose(together.contributions.sum(axis=-1), 1.0, rtol=1e-5)


def test_scoring_options_compute_what_the_definition_says() -> None:
    from models.scoring import causal_average

    windows, recon = _random_windows(3)
    squared = (windows - recon) ** 2
    scale = np.array([1.0, 2.0, 0.5, 4.0, 1.0, 3.0], dtype=np.float32)
    terms = squared / scale
    got = score_windows(windows, ModelOutput(recon), ScoreDefinition(sensor_scale=scale.tolist()))
    np.testing.assert_allclose(got.scores, terms.mean(axis=-1), rtol=1e-6)
    np.testing.assert_allclose(got.contributions, terms / terms.sum(axis=-1, keepdims=True), rtol=1e-5)
    got = score_windows(windows, ModelOutput(recon), ScoreDefinition(aggregation="top_k", top_k=2))
    np.testing.assert_allclose(got.scores, np.sort(squared, axis=-1)[..., -2:].mean(axis=-1), rtol=1e-6)
    got = score_windows(windows, ModelOutput(recon), ScoreDefinition(aggregation="max"))
    np.testing.assert_allclose(got.scores, squared.max(axis=-1), rtol=1e-6)
    level = {"alpha": 0.3, "center": [0.5] * 6, "scale": [2.0] * 6, "weight": 0.7}
    got = score_windows(windows, ModelOutput(recon), ScoreDefinition(level=level))
    level_terms = 0.7 * ((causal_average(windows, 0.3) - 0.5) / 2.0) ** 2
    np.testing.assert_allclose(got.scores, (squared + level_terms).mean(axis=-1), rtol=1e-5)
    got = score_windows(windows, ModelOutput(recon), ScoreDefinition(smoothing_alpha=0.4))
    np.testing.assert_allclose(got.scores, causal_average(squared, 0.4).mean(axis=-1), rtol=1e-5)
    two = ScoreDefinition(smoothing_alpha=0.1, fast_smoothing={"alpha": 0.5, "weight": 0.3})
    got = score_windows(windows, ModelOutput(recon), two)
    terms = np.maximum(causal_average(squared, 0.1), 0.3 * causal_average(squared, 0.5))
    np.testing.assert_allclose(got.scores, terms.mean(axis=-1), rtol=1e-5)
    np.testing.assert_allclose(got.contributions, terms / terms.sum(axis=-1, keepdims=True), rtol=1e-5)


def test_two_speed_smoothing_lets_a_short_incident_through_and_keeps_the_slow_average_elsewhere() -> None:
    """A 3-point burst of error reaches about a quarter of its height under the slow average (alpha 0.1) and
    most of it under the fast one; between bursts the larger term is the slow one's, so a steady error is
    scored as before."""
    error = np.zeros((1, 60, 1), dtype=np.float32)
    error[0, 40:43, 0] = 10.0
    recon = np.zeros_like(error)
    slow = score_windows(error, ModelOutput(recon), ScoreDefinition(smoothing_alpha=0.1)).scores[0]
    both = score_windows(
        error,
        ModelOutput(recon),
        ScoreDefinition(smoothing_alpha=0.1, fast_smoothing={"alpha": 0.3, "weight": 1.0}),
    ).scores[0]
    # A squared error of 100 for 3 points: 1 - 0.9**3 of it under the slow average, 1 - 0.7**3 under the fast.
    assert slow[42] == pytest.approx(27.1, rel=1e-5) and both[42] == pytest.approx(65.7, rel=1e-5)
    steady = np.full((1, 60, 1), 2.0, dtype=np.float32)
    weighted = ScoreDefinition(smoothing_alpha=0.1, fast_smoothing={"alpha": 0.3, "weight": 0.5})
    np.testing.assert_allclose(
        score_windows(steady, ModelOutput(recon), weighted).scores,
        score_windows(steady, ModelOutput(recon), ScoreDefinition(smoothing_alpha=0.1)).scores,
    )


def test_a_fast_average_needs_a_slower_one_beside_it() -> None:
    with pytest.raises(ValueError, match="fast_smoothing"):
        ScoreDefinition(fast_smoothing={"alpha": 0.3, "weight": 1.0})
    with pytest.raises(ValueError, match="larger"):
        ScoreDefinition(smoothing_alpha=0.3, fast_smoothing={"alpha": 0.1, "weight": 1.0})


def test_a_level_shift_filling_the_window_raises_the_level_term_only() -> None:
    windows, _ = _random_windows(4)
    recon = windows.copy()  # a per-window-normalising model reconstructs a shifted window perfectly
    shifted = windows + 5.0
    level = {"alpha": 0.2, "center": [0.0] * 6, "scale": [1.0] * 6}
    plain = score_windows(shifted, ModelOutput(shifted), ScoreDefinition())
    with_level = score_windows(shifted, ModelOutput(shifted), ScoreDefinition(level=level))
    assert plain.scores.max() == 0.0
    assert with_level.scores[:, -10:].min() > 5.0
    base = score_windows(windows, ModelOutput(recon), ScoreDefinition(level=level))
    assert base.scores[:, -10:].mean() < with_level.scores[:, -10:].mean() / 5


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 100, 38), (7, 20, 3), (64, 100, 38)])
@pytest.mark.parametrize("alpha", [0.02, 0.1, 0.5, 1.0])
def test_causal_average_is_the_step_by_step_recursion_bit_for_bit(
    shape: tuple[int, int, int], alpha: float
) -> None:
    """The vectorised form rounds every value as ``a·x[t] + b·y[t − 1]`` in float32 does, step by step: streaming
    and offline scores, and calibrated thresholds, stay bit-identical to the formula."""
    from models.scoring import causal_average

    rng = np.random.default_rng(sum(shape))
    values = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 6, size=shape)).astype(np.float32)
    a, b = np.float32(alpha), np.float32(1.0 - alpha)
    expected = np.empty_like(values)
    expected[:, 0] = values[:, 0]
    for t in range(1, shape[1]):
        expected[:, t] = a * values[:, t] + b * expected[:, t - 1]
    got = causal_average(values, alpha)
    assert got.dtype == np.float32 and got.shape == values.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_a_definition_writes_the_fast_average_only_when_it_uses_one() -> None:
    """A bundle that does not use two-speed smoothing is written without the key, so that a service released
    before the option (whose manifests refuse unknown keys) still loads it; one that uses it round-trips."""
    plain = ScoreDefinition(smoothing_alpha=0.1)
    assert "fast_smoothing" not in plain.model_dump(mode="json")
    assert ScoreDefinition.model_validate(plain.model_dump(mode="json")) == plain
    two = ScoreDefinition(smoothing_alpha=0.1, fast_smoothing={"alpha": 0.3, "weight": 0.7})
    written = two.model_dump(mode="json")
    assert written["fast_smoothing"] == {"alpha": 0.3, "weight": 0.7}
    assert ScoreDefinition.model_validate(written) == two
