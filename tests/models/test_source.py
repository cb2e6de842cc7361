"""The source description and the gap rule: rows on the step grid, short gaps filled forward, longer gaps split."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from models.source import (
    GapRule,
    PrometheusSource,
    Samples,
    SourceError,
    SourceQuery,
    align_rows,
    grid_bounds,
    parse_duration,
    parse_time,
    stream_id_of,
)

STEP = 60.0
T0 = 1_767_225_600.0


def samples(rows: list[int], values: list[float]) -> Samples:
    return Samples(T0 + np.asarray(rows, dtype=np.float64) * STEP, np.asarray(values, dtype=np.float64))


def test_rows_fill_a_short_gap_with_the_last_value_and_split_at_a_longer_one() -> None:
    every = list(range(12))
    a = samples(every, [float(i) for i in every])
    # b misses rows 3-4 (2 steps: filled) and rows 7-9 (3 steps: longer than the rule's 2, a gap).
    b_rows = [0, 1, 2, 5, 6, 10, 11]
    b = samples(b_rows, [100.0 + i for i in b_rows])
    segments = align_rows([a, b], T0, T0 + 11 * STEP, STEP, max_fill_steps=2)
    assert [(s.ts[0], len(s)) for s in segments] == [(T0, 9), (T0 + 10 * STEP, 2)]
    first = segments[0]
    assert first.values[:, 0].tolist() == [float(i) for i in range(9)]
    # Rows 3, 4 take row 2's value; rows 7, 8 are within 2 steps of row 6; row 9 is 3 steps away: the gap.
    assert first.values[:, 1].tolist() == [100, 101, 102, 102, 102, 105, 106, 106, 106]


def test_rows_start_where_every_sensor_has_a_value_and_treat_nan_as_missing() -> None:
    a = samples([0, 1, 2, 3, 4], [1.0, 2.0, np.nan, 4.0, 5.0])
    b = samples([2, 3, 4], [7.0, 8.0, 9.0])
    (segment,) = align_rows([a, b], T0, T0 + 4 * STEP, STEP, max_fill_steps=1)
    assert segment.ts.tolist() == [T0 + 2 * STEP, T0 + 3 * STEP, T0 + 4 * STEP]
    assert segment.values[:, 0].tolist() == [2.0, 4.0, 5.0]  # NaN at row 2: row 1's value, 1 step old


def test_rows_of_a_query_without_data_are_all_gaps() -> None:
    a = samples([0, 1, 2], [1.0, 2.0, 3.0])
    assert align_rows([a, None], T0, T0 + 2 * STEP, STEP, max_fill_steps=5) == []


def test_filling_looks_only_backwards_so_a_later_read_decides_every_row_alike() -> None:
    rows = [0, 1, 2, 3, 8, 9, 10, 11, 12, 13]
    a = samples(rows, [float(i) for i in rows])
    whole = align_rows([a], T0, T0 + 13 * STEP, STEP, max_fill_steps=3)
    # A poller reading from row 6 (3 steps of look-back before its first new row, 9) sees the same rows from 9 on.
    later = align_rows([a], T0 + 6 * STEP, T0 + 13 * STEP, STEP, max_fill_steps=3)
    assert [s.since(T0 + 9 * STEP).ts.tolist() for s in whole][-1] == later[-1].since(
        T0 + 9 * STEP
    ).ts.tolist()
    assert [len(s) for s in whole] == [7, 6]  # rows 0-6 (4-6 filled from row 3), then 8-13


def test_the_grid_is_made_of_multiples_of_the_step() -> None:
    assert grid_bounds(T0 + 1, T0 + 150, STEP) == (T0 + 60, T0 + 120)
    assert grid_bounds(T0, T0, STEP) == (T0, T0)


def test_durations_times_and_stream_ids_parse_as_documented() -> None:
    assert (
        parse_duration("60s") == 60
        and parse_duration("1h30m") == 5400
        and parse_duration("14d") == 14 * 86400
    )
    assert parse_duration("15") == 15 and parse_duration("500ms") == 0.5
    for bad in ("", "10x", "-5s", "1m h"):
        with pytest.raises(SourceError):
            parse_duration(bad)
    assert (
        parse_time("2026-01-01T00:00:00Z") == T0 == parse_time(str(T0)) == parse_time("2026-01-01T00:00:00")
    )
    assert stream_id_of("10.0.0.1:9100") == "10.0.0.1:9100"
    assert stream_id_of("web/1 eu") == "web_1_eu"


def test_a_source_refuses_twice_named_queries_bad_labels_and_sub_millisecond_steps() -> None:
    q = SourceQuery(name="cpu", expr="up")
    with pytest.raises(ValidationError, match="query 'cpu' is named twice"):
        PrometheusSource(queries=[q, q], step_s=60)
    with pytest.raises(ValidationError, match="by"):
        PrometheusSource(queries=[q], by="not a label", step_s=60)
    with pytest.raises(ValidationError, match="whole milliseconds"):
        PrometheusSource(queries=[q], step_s=0.0001)
    with pytest.raises(ValidationError):
        SourceQuery(name="has space", expr="up")
    source = PrometheusSource(
        queries=[q, SourceQuery(name="mem", expr="x")], step_s=60, gap=GapRule(max_fill_steps=1)
    )
    assert source.feature_names == ["cpu", "mem"]
    assert source.same_sensors(source.model_copy(update={"gap": GapRule(max_fill_steps=9)}))
    assert not source.same_sensors(source.model_copy(update={"step_s": 30.0}))
