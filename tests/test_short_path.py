"""bench.short_path: its two-path state machine with a one-point critical path is the service's lifecycle."""

from __future__ import annotations

import numpy as np
import pytest

from bench.short_path import TwoPaths, spans_of
from models.lifecycle import LevelThresholds, replay_series
from models.manifest import AlertPolicy


@pytest.mark.parametrize(("k", "n"), [(1, 1), (2, 3), (3, 5), (5, 8)])
@pytest.mark.parametrize("m", [1, 3, 12])
def test_one_point_critical_path_fires_and_resolves_as_the_reference(k: int, n: int, m: int) -> None:
    rng = np.random.default_rng(k * 100 + m)
    for _ in range(60):
        scores = rng.exponential(1.0, 300) ** rng.uniform(0.5, 3.0)
        scores[rng.random(300) < 0.05] = np.nan
        warning = float(np.nanquantile(scores, rng.uniform(0.5, 0.95)))
        critical = warning * float(rng.uniform(1.0, 5.0))
        policy = AlertPolicy(k=k, n=n, m=m, exit_ratio=0.8)
        expected = [
            (s.start, s.end) for s in replay_series(scores, LevelThresholds(warning, critical, policy))
        ]
        found = [(s.start, s.end) for s in spans_of(scores, warning, critical, TwoPaths(k, n, m))]
        assert found == expected


def test_two_of_three_over_critical_fire_where_one_point_does_not() -> None:
    scores = np.array([0.0, 5.0, 0.0, 0.0, 0.0, 0.0, 5.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0])
    life = TwoPaths(k=3, n=5, m=2, ck=2, cn=3)
    assert [(s.start, s.end) for s in spans_of(scores, 1.0, 4.0, life)] == [(8, 10)]
    assert spans_of(scores, 1.0, 6.0, life) == []  # never over critical, never 3 of 5 over warning
