"""bench.event_lengths: events counted in the right length class, detected only when a firing span overlaps."""

from __future__ import annotations

import math

import numpy as np

from bench.event_lengths import LengthClass, MissedEvent, missed_peaks, peak_classes, pooled, recall_by_length
from models.lifecycle import AlertSpan


def span(start: int, end: int) -> AlertSpan:
    return AlertSpan(start=start, end=end, critical=False)


def labels_with(events: list[tuple[int, int]], n: int = 400) -> np.ndarray:
    y = np.zeros(n, dtype=np.int8)
    for start, end in events:
        y[start:end] = 1
    return y


def test_each_event_lands_in_its_length_class() -> None:
    # lengths 1, 4 (short), 5, 19 (5-19), 20 (20-99), 100 (100+)
    events = [(0, 1), (10, 14), (30, 35), (50, 69), (80, 100), (200, 300)]
    classes = recall_by_length([span(12, 13), span(68, 90), span(299, 310)], labels_with(events))
    assert [(c.label, c.events, c.detected) for c in classes] == [
        ("1-4", 2, 1),
        ("5-19", 2, 1),
        ("20-99", 1, 1),
        ("100+", 1, 1),
    ]


def test_a_span_that_ends_where_an_event_starts_does_not_detect_it() -> None:
    classes = recall_by_length([span(0, 10), span(15, 20)], labels_with([(10, 15)]))
    assert classes[1].events == 1 and classes[1].detected == 0
    assert math.isnan(classes[0].recall)


def test_pooled_sums_class_by_class() -> None:
    a = [LengthClass(1, 5, 3, 1), LengthClass(5, None, 2, 2)]
    b = [LengthClass(1, 5, 1, 1), LengthClass(5, None, 0, 0)]
    assert pooled([a, b]) == [LengthClass(1, 5, 4, 2), LengthClass(5, None, 2, 2)]
    assert pooled([a, b])[0].recall == 0.5


def test_missed_peaks_are_the_unpaged_events_highest_scores_over_warning() -> None:
    labels = labels_with([(10, 12), (50, 80), (200, 201)])
    scores = np.full(400, 1.0)
    scores[10:12] = 3.0  # paged below
    scores[60] = 8.0  # inside the second event
    scores[203] = 6.0  # within the tail after the third
    scores[206] = 50.0  # past it
    missed = missed_peaks(scores, labels, [span(11, 20)], warning=6.0)
    assert missed == [MissedEvent(50, 30, 8.0 / 6.0, 1), MissedEvent(200, 1, 1.0, 1)]
    scores[200:206] = np.nan
    assert math.isnan(missed_peaks(scores, labels, [span(11, 20)], warning=6.0)[1].peak)


def test_peak_classes_count_each_missed_event_once_and_its_short_ones() -> None:
    missed = [
        MissedEvent(0, n, peak, 0)
        for n, peak in [(1, 0.1), (30, 0.49), (2, 0.5), (3, 0.95), (100, 1.0), (4, 12.0)]
    ]
    assert peak_classes(missed) == [("0-0.5", 2, 1), ("0.5-0.8", 1, 1), ("0.8-1", 1, 1), (">= 1", 2, 1)]
