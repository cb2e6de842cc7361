"""The Lua lifecycle in a real Redis and the pure-Python reference raise identical events, levels and state
for the same random scores, thresholds, (k, n, m), chunking and timestamps (fixed and adaptive thresholds)."""

from __future__ import annotations

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.lifecycle import LevelThresholds
from models.manifest import AdaptivePolicy, AlertPolicy, ScoreBaseline
from tests.service.lifecycle_drivers import Point, run_lua, run_reference

SENSORS = ["", "cpu", "cpu,mem", "disk,net,io"]
# Epoch seconds, ms, µs and ns: steps that float64 holds exactly at each magnitude.
TS_SCALES = [(0.0, 1.0), (1.7e9, 1.0), (1.7e12, 1000.0), (1.7e15, 1e6), (1.7e18, 1e4 * 256)]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[LevelThresholds, list[list[Point]]]:
    warning = draw(st.floats(0.05, 2.0))
    critical = warning * draw(st.floats(1.0, 4.0))
    n = draw(st.integers(1, 8))
    adaptive = draw(st.booleans())
    policy = AlertPolicy(
        k=draw(st.integers(1, n)),
        n=n,
        m=draw(st.integers(1, 6)),
        exit_ratio=draw(st.sampled_from([1.0, 0.8, 0.5, draw(st.floats(0.05, 1.0))])),
        thresholds="adaptive" if adaptive else "fixed",
        adaptive=AdaptivePolicy(
            warmup_points=draw(st.integers(2, 30)),
            half_life_points=draw(st.floats(1.0, 100.0)),
            min_ratio=draw(st.floats(0.05, 1.0)),
            max_ratio=draw(st.floats(1.0, 50.0)),
            sigma_floor_ratio=draw(st.floats(0.01, 1.0)),
        ),
    )
    baseline = ScoreBaseline(root_mean=draw(st.floats(0.05, 1.0)), root_std=draw(st.floats(0.01, 1.0)))
    levels = LevelThresholds(warning, critical, policy, baseline)
    exit_value = warning * policy.exit_ratio
    # Scores on and around every boundary, and anywhere.
    score = st.one_of(
        st.sampled_from([0.0, warning, critical, exit_value, warning * (1 - 1e-12), critical * (1 + 1e-12)]),
        st.floats(0.0, 3.0 * critical),
        st.floats(0.0, warning),
    )
    origin, step = draw(st.sampled_from(TS_SCALES))
    # Mostly increasing ts, sometimes repeated or going back (skipped by both).
    moves = draw(st.lists(st.sampled_from([1, 1, 1, 1, 2, 0, -1]), min_size=1, max_size=120))
    ts, points = origin, []
    for move in moves:
        ts = ts + move * step
        points.append((ts, draw(score), draw(st.sampled_from(SENSORS))))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(points) - 1)), max_size=6)))
    chunks = [points[a:b] for a, b in zip([0, *cuts], [*cuts, len(points)], strict=True)]
    return levels, chunks


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=scenarios())
def test_lua_lifecycle_and_python_reference_agree_event_for_event(
    clean_redis: redis.Redis, scenario: tuple[LevelThresholds, list[list[Point]]]
) -> None:
    levels, chunks = scenario
    lua_events, lua_levels, lua_state = run_lua(clean_redis, levels, chunks)
    ref_events, ref_levels, ref_state = run_reference(levels, chunks)
    assert lua_events == ref_events
    assert lua_levels == ref_levels
    assert lua_state == ref_state


def test_equivalence_covers_firing_resolution_and_adaptive_thresholds(clean_redis: redis.Redis) -> None:
    """A long deterministic run through every transition with adaptive thresholds past their warm-up: the
    property above could pass on runs that never leave 'ok'; this one cannot."""
    import numpy as np

    rng = np.random.default_rng(7)
    base = rng.gamma(2.0, 0.05, size=3000)
    base[800:830] += 1.0  # a sustained anomaly over warning...
    base[815] = 9.0  # ...that escalates to critical
    base[1500] = 9.0  # a spike over critical
    base[2000:2300] *= 3.0  # drift
    policy = AlertPolicy(k=3, n=5, m=4, thresholds="adaptive", adaptive=AdaptivePolicy(warmup_points=100))
    levels = LevelThresholds(0.5, 2.0, policy, ScoreBaseline(root_mean=0.3, root_std=0.1))
    points = [(1.7e18 + i * 1e4 * 256, float(v), "cpu,mem") for i, v in enumerate(base)]
    chunks = [points[i : i + 37] for i in range(0, len(points), 37)]
    lua_events, lua_levels, lua_state = run_lua(clean_redis, levels, chunks)
    ref_events, ref_levels, ref_state = run_reference(levels, chunks)
    states = {e[0] for e in ref_events}
    assert {"pending", "firing", "resolved"} <= states
    assert any(e[6] for e in ref_events)  # an escalation
    assert len({e[7] for e in ref_events}) > 2  # thresholds moved with the stream
    assert (lua_events, lua_levels, lua_state) == (ref_events, ref_levels, ref_state)
