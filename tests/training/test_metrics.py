"""training/metrics.py against TSB-AD 1.5's own numbers (tests/fixtures/metrics_reference.json) and against
small cases worked out by hand in the comments."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.metrics import (
    PRF,
    Segment,
    auc_pr,
    auc_roc,
    evaluate_scores,
    event_prf,
    hit_rate,
    parse_interpretation_labels,
    point_adjusted_f1,
    point_prf,
    volume_under_surface,
    vus_pr,
    vus_roc,
)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = json.loads((ROOT / "tests" / "fixtures" / "metrics_reference.json").read_text())
SMD = ROOT / "data" / "smd-machine-1-2"
TSB_AD_TOLERANCE = 1e-9  # measured: the largest gap is 3.3e-16

# Hand case (T = 10). Events: rows 2-4 and row 7. At threshold 0.5 the predicted rows are 1, 2, 4, 8, 9.
SCORES = np.array([0.1, 0.6, 0.7, 0.2, 0.9, 0.1, 0.1, 0.3, 0.8, 0.8])
LABELS = np.array([0, 0, 1, 1, 1, 0, 0, 1, 0, 0])


def case_inputs(case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(case["scores_q"], dtype=np.int64) / float(case["quantum"])
    labels = np.zeros(case["n_points"], dtype=np.int64)
    for start, end in case["runs"]:
        labels[start:end] = 1
    return scores, labels


CASES = [pytest.param(case, id=case["name"]) for case in REFERENCE["cases"]]


@pytest.mark.parametrize("case", CASES)
def test_ranking_metrics_match_tsb_ad(case: dict[str, Any]) -> None:
    scores, labels = case_inputs(case)
    expected = case["expected"]
    vus = volume_under_surface(scores, labels, case["sliding_window"])
    assert auc_pr(scores, labels) == pytest.approx(expected["AUC-PR"], abs=TSB_AD_TOLERANCE)
    assert auc_roc(scores, labels) == pytest.approx(expected["AUC-ROC"], abs=TSB_AD_TOLERANCE)
    assert vus.pr == pytest.approx(expected["VUS-PR"], abs=TSB_AD_TOLERANCE)
    assert vus.roc == pytest.approx(expected["VUS-ROC"], abs=TSB_AD_TOLERANCE)
    assert vus_pr(scores, labels, case["sliding_window"]) == vus.pr
    assert vus_roc(scores, labels, case["sliding_window"]) == vus.roc


@pytest.mark.parametrize("case", CASES)
def test_point_prf_reproduces_tsb_ad_oracle_f1(case: dict[str, Any]) -> None:
    # TSB-AD's Standard-F1: best 2PR / (P + R + 1e-5) over thresholds "score >= v", v every distinct score.
    scores, labels = case_inputs(case)
    best = 0.0
    for value in np.unique(scores):
        precision, recall, _ = point_prf(scores, labels, float(np.nextafter(value, -np.inf)))
        best = max(best, 2 * precision * recall / (precision + recall + 1e-5))
    assert best == pytest.approx(case["expected"]["Standard-F1"], abs=TSB_AD_TOLERANCE)


@pytest.mark.parametrize("case", CASES)
def test_point_adjusted_f1_reproduces_tsb_ad_pa_f1(case: dict[str, Any]) -> None:
    # TSB-AD's PA-F1: best point-adjusted F1 of "score > t" over 100 evenly spaced t from min to max score
    # (Vigil's functions count "score >= t": the next float up gives TSB-AD's set).
    scores, labels = case_inputs(case)
    grid = np.linspace(scores.min(), scores.max(), 100)
    best = max(point_adjusted_f1(scores, labels, float(np.nextafter(t, np.inf))).f1 for t in grid)
    assert best == pytest.approx(case["expected"]["PA-F1"], abs=TSB_AD_TOLERANCE)


def test_point_prf_counts_points_over_the_threshold() -> None:
    # TP = rows 2, 4; predicted 5; labelled 4 -> P = 2/5, R = 2/4, F1 = 0.4 / 0.9 = 4/9.
    assert point_prf(SCORES, LABELS, 0.5) == pytest.approx(PRF(0.4, 0.5, 4 / 9))
    # at or over, as the service counts a point at a level: rows 8, 9 at 0.8 are alarms beside row 4 -> P = 1/3
    assert point_prf(SCORES, LABELS, 0.8).precision == pytest.approx(1 / 3)
    assert point_prf(SCORES, LABELS, float(np.nextafter(0.8, 1.0))).precision == pytest.approx(1.0)
    assert point_prf(SCORES, LABELS, 0.65) == pytest.approx(PRF(2 / 4, 2 / 4, 0.5))


def test_event_prf_counts_events_found_and_alarms_that_hit_one() -> None:
    # Events {2-4} found, {7} missed -> R = 1/2. Alarms {1-2} and {4} hit event 1, {8-9} hits nothing
    # -> P = 2/3. F1 = 2 (2/3)(1/2) / (7/6) = 4/7.
    assert event_prf(SCORES, LABELS, 0.5) == pytest.approx(PRF(2 / 3, 1 / 2, 4 / 7))
    assert event_prf(SCORES, LABELS, 1.0) == PRF(0.0, 0.0, 0.0)


def test_point_adjusted_f1_credits_the_whole_detected_event() -> None:
    # Event {2-4} is hit, so rows 2, 3, 4 all count; event {7} is not. Predicted {1, 2, 3, 4, 8, 9}:
    # TP 3, P = 3/6, R = 3/4, F1 = 2 (0.5)(0.75) / 1.25 = 0.6. Unadjusted recall at the same threshold: 0.5.
    assert point_adjusted_f1(SCORES, LABELS, 0.5) == pytest.approx(PRF(0.5, 0.75, 0.6))


def test_unscored_points_are_left_out_of_every_metric() -> None:
    rng = np.random.default_rng(0)
    labels = np.zeros(600, dtype=np.int64)
    labels[200:230] = labels[400:403] = 1
    scores = rng.normal(size=600) + 2 * labels
    warm_up = np.full(99, np.nan)
    padded_scores = np.concatenate((warm_up, scores))
    padded_labels = np.concatenate((np.ones(99, dtype=np.int64), labels))  # labels there must not count
    trimmed = evaluate_scores(scores, labels, 1.0).as_dict()
    padded = evaluate_scores(padded_scores, padded_labels, 1.0).as_dict()
    assert padded.pop("n_unscored") == 99 and trimmed.pop("n_unscored") == 0
    assert padded == trimmed


def test_nan_inside_an_event_removes_only_that_point() -> None:
    scores = np.array([0.0, np.nan, 0.9, 0.0])
    labels = np.array([0, 1, 1, 0])
    assert point_prf(scores, labels, 0.5) == PRF(1.0, 1.0, 1.0)


def test_ranking_metrics_are_nan_when_undefined() -> None:
    scores = np.linspace(0.0, 1.0, 50)
    no_anomaly = np.zeros(50, dtype=np.int64)
    all_anomaly = np.ones(50, dtype=np.int64)
    assert math.isnan(auc_pr(scores, no_anomaly))
    assert math.isnan(auc_roc(scores, all_anomaly))
    assert math.isnan(vus_pr(scores, no_anomaly))
    assert math.isnan(vus_roc(scores, all_anomaly))
    assert auc_pr(scores, all_anomaly) == 1.0
    assert point_prf(scores, no_anomaly, 0.5).recall == 0.0


def test_ranking_metrics_depend_only_on_the_order_of_scores() -> None:
    scores, labels = case_inputs(REFERENCE["cases"][0])
    squashed = np.tanh(scores / 3) * 7 + 100  # strictly increasing: same ranking, different values
    assert vus_pr(squashed, labels) == pytest.approx(vus_pr(scores, labels), abs=1e-12)
    assert auc_roc(squashed, labels) == pytest.approx(auc_roc(scores, labels), abs=1e-12)


def test_vus_ranks_a_detector_above_noise() -> None:
    rng = np.random.default_rng(1)
    labels = np.zeros(3000, dtype=np.int64)
    labels[1000:1050] = labels[2200:2210] = 1
    noise = rng.normal(size=3000)
    assert vus_pr(noise + 3 * labels, labels) > 0.6 > 0.1 > vus_pr(noise, labels)


def test_hit_rate_scores_the_top_sensors_of_each_labelled_row() -> None:
    contributions = np.array(
        [
            [0.5, 0.1, 0.3, 0.1],  # top-2 {0, 2}: 2/2. top-3 adds 1 (tie with 3, lower index first): 2/2
            [0.1, 0.6, 0.2, 0.1],  # top-2 {1, 2}: 1/2. top-3 adds 0 (tie with 3): 2/2
            [0.2, 0.3, 0.1, 0.4],  # top-2 {3, 1}: 0/2. top-3 adds 0: 1/2
            [0.9, 0.0, 0.0, 0.0],  # not labelled anomalous: left out
        ]
    )
    labels = np.array([1, 1, 1, 0])
    segments = [(0, 4, [0, 2])]
    assert hit_rate(contributions, labels, segments, 1.0) == pytest.approx((1 + 0.5 + 0) / 3)
    assert hit_rate(contributions, labels, segments, 1.5) == pytest.approx((1 + 1 + 0.5) / 3)


def test_hit_rate_floors_the_number_of_sensors_looked_at() -> None:
    # |G| = 1 at 150%: floor(1.5) = 1 sensor, the wrong one here (round or ceil would look at 2 and hit).
    contributions = np.array([[0.2, 0.7, 0.1]])
    assert hit_rate(contributions, np.array([1]), [(0, 1, [0])], 1.5) == 0.0
    assert math.isnan(hit_rate(contributions, np.array([0]), [(0, 1, [0])], 1.0))
    with pytest.raises(ValueError, match="sensor index"):
        hit_rate(contributions, np.array([1]), [(0, 1, [3])], 1.0)


def test_parse_interpretation_labels_reads_the_shipped_smd_sample() -> None:
    segments = parse_interpretation_labels((SMD / "interpretation_label.txt").read_text())
    assert segments[0] == Segment(4629, 4688, (8, 9, 10, 12, 14, 17))
    with gzip.open(SMD / "test_label.txt.gz", "rt") as handle:
        labels = np.array([int(float(v)) for v in handle.read().split()])
    edges = np.flatnonzero(np.diff(np.concatenate(([0], labels, [0]))))
    assert [(s.start, s.end) for s in segments] == list(zip(edges[::2], edges[1::2], strict=True))


def test_parse_interpretation_labels_names_the_bad_line() -> None:
    assert parse_interpretation_labels("\n1-3:1,2\n\n") == [Segment(1, 3, (0, 1))]
    for bad in ("1-3", "1-3:", "3-1:2", "1:2", "1-3:0"):
        with pytest.raises(ValueError, match="line 2"):
            parse_interpretation_labels(f"0-1:1\n{bad}")


def test_evaluate_scores_reports_every_metric_on_smd_labels() -> None:
    segments = parse_interpretation_labels((SMD / "interpretation_label.txt").read_text())
    with gzip.open(SMD / "test_label.txt.gz", "rt") as handle:
        labels = np.array([int(float(v)) for v in handle.read().split()])
    rng = np.random.default_rng(3)
    scores = rng.normal(size=labels.size) + 2 * labels
    scores[:99] = np.nan
    faulty = rng.uniform(0.0, 0.5, size=(labels.size, 38))
    for start, end, sensors in segments:  # an attribution that ranks the faulty sensors first
        faulty[start:end, list(sensors)] += 1.0
    report = evaluate_scores(scores, labels, 1.5, faulty, segments)
    assert report.hit_rate_100 == report.hit_rate_150 == 1.0
    inverted = evaluate_scores(scores, labels, 1.5, -faulty, segments)
    assert inverted.hit_rate_100 == 0.0
    assert report.n_points == labels.size - 99 and report.n_events == len(segments)
    assert report.vus_pr == vus_pr(scores, labels) and report.point == point_prf(scores, labels, 1.5)
    flat = report.as_dict()
    assert (
        flat["point_adjusted_f1"] == report.point_adjusted.f1 and flat["event_recall"] == report.event.recall
    )
    json.dumps(flat)
    assert evaluate_scores(scores, labels, 1.5).hit_rate_100 is None


def test_malformed_input_raises_value_error() -> None:
    with pytest.raises(ValueError, match="equally long"):
        auc_pr(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="0 or 1"):
        point_prf(np.zeros(3), np.array([0, 2, 1]), 0.5)
    with pytest.raises(ValueError, match="both"):
        evaluate_scores(SCORES, LABELS, 0.5, contributions=np.zeros((10, 2)))
    with pytest.raises(ValueError, match="sliding_window"):
        vus_pr(SCORES, LABELS, -1)


def test_hit_rate_breaks_ties_towards_the_lower_sensor_index() -> None:
    # 38 sensors, eight tied at 0.5: the top 3 are sensors 3, 5 and 8, all at fault -> 1.0.
    contributions = np.zeros((1, 38))
    contributions[0, [3, 5, 8, 13, 21, 30, 34, 37]] = 0.5
    assert hit_rate(contributions, np.array([1]), [(0, 1, [3, 5, 8])], 1.0) == 1.0
