"""The alert lifecycle's specification, one transition per case, each checked on both implementations: the Lua
in a real Redis and the pure-Python reference."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from models.lifecycle import LevelThresholds, replay_series
from models.manifest import AdaptivePolicy, AlertPolicy, ScoreBaseline
from tests.service.lifecycle_drivers import Point, run_lua, run_reference

W, C = 1.0, 4.0  # warning and critical


def levels(k: int = 3, n: int = 5, m: int = 3, exit_ratio: float = 0.8) -> LevelThresholds:
    return LevelThresholds(W, C, AlertPolicy(k=k, n=n, m=m, exit_ratio=exit_ratio))


def series(*scores: float, sensors: str = "s") -> list[Point]:
    return [(float(i), s, sensors) for i, s in enumerate(scores)]


def transitions(events: list[tuple[Any, ...]]) -> list[tuple[str, int, str]]:
    """(state, ts, severity) of each event, or ``firing+`` for an escalation."""
    return [(e[0] + ("+" if e[6] else ""), int(e[3]), e[1]) for e in events]


Runner = Callable[[LevelThresholds, list[list[Point]]], tuple[list[tuple[Any, ...]], str, dict]]


@pytest.fixture(params=["lua", "reference"])
def run(request: pytest.FixtureRequest, clean_redis: redis.Redis) -> Runner:
    if request.param == "lua":
        return lambda lv, chunks: run_lua(clean_redis, lv, chunks)
    return run_reference


CASES: list[tuple[str, LevelThresholds, list[Point], list[tuple[str, int, str]]]] = [
    (
        "k of the last n over warning fire",
        levels(k=3, n=5),
        series(W, 0, W, 0, W),
        [("pending", 0, "warning"), ("firing", 4, "warning")],
    ),
    (
        "a score equal to warning counts as over",
        levels(k=1, n=1),
        series(0.5, W),
        [("pending", 1, "warning"), ("firing", 1, "warning")],
    ),
    (
        "fewer than k of the last n stay pending",
        levels(k=3, n=3),
        series(W, 0, W, 0),
        [("pending", 0, "warning")],
    ),
    (
        "pending with none of the last n over is cancelled",
        levels(k=3, n=3),
        series(W, 0, 0, 0),
        [("pending", 0, "warning"), ("cancelled", 3, "warning")],
    ),
    (
        "one point at critical fires at once, critical",
        levels(k=3, n=5),
        series(0, C),
        [("pending", 1, "warning"), ("firing", 1, "critical")],
    ),
    (
        "a critical point while pending fires critical",
        levels(k=3, n=5),
        series(W, C),
        [("pending", 0, "warning"), ("firing", 1, "critical")],
    ),
    (
        "a firing warning alert escalates once to critical",
        levels(k=1, n=1, m=5),
        series(W, C, C, W),
        [("pending", 0, "warning"), ("firing", 0, "warning"), ("firing+", 1, "critical")],
    ),
    (
        "m points in a row under exit resolve",
        levels(k=1, n=1, m=3, exit_ratio=0.5),
        series(W, 0.4, 0.4, 0.4),
        [("pending", 0, "warning"), ("firing", 0, "warning"), ("resolved", 3, "warning")],
    ),
    (
        "hysteresis: under warning but over exit does not count toward resolving",
        levels(k=1, n=1, m=2, exit_ratio=0.5),
        series(W, 0.7, 0.7, 0.7, 0.4, 0.4),
        [("pending", 0, "warning"), ("firing", 0, "warning"), ("resolved", 5, "warning")],
    ),
    (
        "a point at exit or over restarts the count",
        levels(k=1, n=1, m=2, exit_ratio=0.5),
        series(W, 0.4, 0.5, 0.4, 0.4),
        [("pending", 0, "warning"), ("firing", 0, "warning"), ("resolved", 4, "warning")],
    ),
    (
        "after resolving, k fresh hits are needed again",
        levels(k=2, n=3, m=1, exit_ratio=1.0),
        series(W, W, 0, W, 0, W),
        [
            ("pending", 0, "warning"),
            ("firing", 1, "warning"),
            ("resolved", 2, "warning"),
            ("pending", 3, "warning"),
            ("firing", 5, "warning"),
        ],
    ),
    (
        "flags are kept after a cancel: old hits still count",
        levels(k=2, n=4),
        series(W, 0, 0, 0, 0, W, 0, W),
        [
            ("pending", 0, "warning"),
            ("cancelled", 4, "warning"),
            ("pending", 5, "warning"),
            ("firing", 7, "warning"),
        ],
    ),
]


@pytest.mark.parametrize(("name", "lv", "points", "expected"), CASES, ids=[c[0] for c in CASES])
def test_lifecycle_transition(
    run: Runner, name: str, lv: LevelThresholds, points: list[Point], expected: list[tuple[str, int, str]]
) -> None:
    events, _, _ = run(lv, [points])
    assert transitions(events) == expected, name


def test_lifecycle_keeps_the_peak_and_its_sensors(run: Runner) -> None:
    points = [(0.0, W, "a"), (1.0, 3.0, "b,c"), (2.0, 2.0, "d"), (3.0, 0.0, "e")]
    events, _, _ = run(levels(k=1, n=1, m=1, exit_ratio=0.5), [points])
    resolved = events[-1]
    assert resolved[0] == "resolved"
    assert (resolved[4], resolved[5], resolved[2]) == (3.0, "b,c", 0.0)


def test_lifecycle_skips_points_not_after_the_last_ts_and_says_so(run: Runner) -> None:
    points = [(5.0, 0.0, ""), (5.0, C, ""), (4.0, C, ""), (6.0, W, "")]
    events, level_text, _ = run(levels(k=1, n=1), [points[:2], points[2:]])
    assert level_text == "0--1"
    assert transitions(events) == [("pending", 6, "warning"), ("firing", 6, "warning")]


def test_lifecycle_levels_are_against_the_thresholds_in_effect(run: Runner) -> None:
    _, level_text, _ = run(levels(), [series(0, W * 0.999, W, C * 0.999, C, 10 * C)])
    assert level_text == "001122"


@pytest.mark.parametrize("origin", [1.7e9, 1.7e12, 1.7e15, 1.7e18], ids=["s", "ms", "us", "ns"])
def test_lifecycle_keeps_epoch_timestamps_exact(run: Runner, origin: float) -> None:
    """Timestamps one step apart at every epoch resolution stay distinct: a critical point right after a
    warning one fires (the old tracker rounded ts to 14 digits and skipped it at µs and ns)."""
    step = 256.0 if origin >= 1e18 else 1.0
    points = [(origin + i * step, s, "x") for i, s in enumerate([0.0, W, C])]
    events, level_text, state = run(levels(k=3, n=5), [points[:2], points[2:]])
    assert level_text == "012"
    assert transitions(events)[-1][0] == "firing"
    assert events[-1][3] == origin + 2 * step
    assert state["last_ts"] == origin + 2 * step


def adaptive_levels(**adaptive: Any) -> LevelThresholds:
    policy = AlertPolicy(k=1, n=1, m=1, thresholds="adaptive", adaptive=AdaptivePolicy(**adaptive))
    # Validation: sqrt(score) ~ 0.5 ± 0.1, so warning W = 1 sits at z = 5 and critical C = 4 at z = 15.
    return LevelThresholds(W, C, policy, ScoreBaseline(root_mean=0.5, root_std=0.1))


def test_adaptive_thresholds_are_the_calibrated_ones_during_the_warm_up(run: Runner) -> None:
    lv = adaptive_levels(warmup_points=10)
    events, _, state = run(lv, [series(*[4.0] * 9, W)])  # a stream four times the validation level
    assert [e[7] for e in events if e[0] == "firing"] == [C]
    assert state["seen"] == 10


def test_adaptive_thresholds_follow_a_stream_that_sits_higher_than_validation(run: Runner) -> None:
    """A stream whose normal level is 4x validation's stays in alert under fixed thresholds; with adaptive
    ones its thresholds rise to the same standard score of its own distribution after the warm-up."""
    import numpy as np

    rng = np.random.default_rng(3)
    roots = 1.0 + 0.1 * rng.standard_normal(400)  # sqrt(score) ~ 1.0 ± 0.1: scores around 1 = W
    scores = [float(r * r) for r in roots]
    fixed = replay_series(scores, levels(k=1, n=1, m=1))
    lv = adaptive_levels(warmup_points=100, max_ratio=10.0)
    events, level_text, _ = run(lv, [series(*scores)])
    after_warmup = level_text[100:]
    assert sum(span.end - span.start for span in fixed) > 100
    assert after_warmup.count("0") == len(after_warmup)  # z = 5 of the stream's own spread: ~(1 + 0.5)^2
    assert not [e for e in events if e[0] == "firing" and e[3] >= 100]


def test_adaptive_thresholds_do_not_learn_from_a_sustained_anomaly(run: Runner) -> None:
    import numpy as np

    rng = np.random.default_rng(4)
    roots = 0.5 + 0.1 * rng.standard_normal(2000)
    roots[300:1800] += 1.0  # a long anomaly after the warm-up: every point over warning
    lv = adaptive_levels(warmup_points=200, half_life_points=50)
    events, level_text, _ = run(lv, [series(*[float(r * r) for r in roots])])
    firing = [e for e in events if e[0] == "firing"]
    assert firing and firing[0][3] == 300
    assert set(level_text[300:1800]) <= {"1", "2"}  # still over warning at its end: nothing was learned


def test_adaptive_thresholds_stay_within_their_bounds(run: Runner) -> None:
    lv = adaptive_levels(warmup_points=5, min_ratio=0.5, max_ratio=2.0)
    flat = series(*[1e-6] * 20)  # a flat stream would get thresholds near 0 without the floor
    events, level_text, _ = run(lv, [flat, [(20.0, 0.5 * W, "")], [(21.0, 0.5 * C, "")]])
    assert level_text.endswith("12")
    assert [e[7] for e in events if e[0] == "firing"] == [0.5 * W, 0.5 * C]  # warning, then the escalation
    high = series(*[9.0, 16.0] * 10)  # sqrt(score) 3.5 ± 0.5: its own thresholds would be ~36 and ~121
    events, level_text, _ = run(lv, [high, [(20.0, 2.0 * W, "")], [(21.0, 2.0 * C, "")]])
    assert level_text == "2" * 20 + "12"  # at the ceilings: warning 2 W, critical 2 C


def test_reference_replay_of_a_series_gives_firing_spans() -> None:
    spans = replay_series([float("nan"), 0, W, W, W, 0, 0, 0, W, C, 0], levels(k=3, n=5, m=3, exit_ratio=1.0))
    assert [(s.start, s.end, s.critical) for s in spans] == [(4, 7, False), (9, 11, True)]
