"""bench/machine_spread.py: bootstrap intervals over machines, and reading back the tables the report writes."""

from __future__ import annotations

import numpy as np
import pytest

from bench import machine_spread as spread
from bench.smd_report import alert_machine_table, machine_table
from bench.smd_rows import DEFAULT_SCORING


def test_an_interval_holds_its_mean_is_seeded_and_widens_with_the_spread() -> None:
    rng = np.random.default_rng(1)
    narrow = list(0.8 + 0.01 * rng.normal(size=14))
    wide = list(0.8 + 0.2 * rng.normal(size=14))
    a, b = spread.interval(narrow), spread.interval(wide)
    assert a.low <= a.mean <= a.high and b.low <= b.mean <= b.high
    assert a.mean == pytest.approx(np.mean(narrow))
    assert (a.high - a.low) * 5 < b.high - b.low
    assert spread.interval(wide) == b  # seeded: the same figures every run
    same = spread.interval([0.5] * 14)
    assert (same.low, same.mean, same.high) == pytest.approx((0.5, 0.5, 0.5))


def test_the_columns_of_one_resample_use_the_same_machines() -> None:
    values = np.arange(14, dtype=np.float64)
    means = spread.resample_means(np.stack([values, 2 * values], axis=1), resamples=500)
    np.testing.assert_allclose(means[:, 1], 2 * means[:, 0])
    assert means[:, 0].std() > 0


def _rows(recall: list[float], per_day: list[float]) -> tuple[dict[str, float], dict[str, float]]:
    machines = [f"machine-{i}" for i in range(len(recall))]
    return dict(zip(machines, recall, strict=True)), dict(zip(machines, per_day, strict=True))


def test_the_target_column_is_the_share_of_resamples_meeting_both_bounds() -> None:
    good_recall, good_rate = _rows([0.9, 0.95, 0.85, 1.0] * 3, [0.2, 0.5, 0.1, 0.4] * 3)
    noisy_recall, noisy_rate = _rows([0.9, 0.5] * 6, [0.5, 1.2] * 6)
    bad_recall, bad_rate = _rows([0.5, 0.6] * 6, [0.5, 0.6] * 6)
    recall = {"good": good_recall, "noisy": noisy_recall, "bad": bad_recall}
    rates = {"good": good_rate, "noisy": noisy_rate, "bad": bad_rate}
    vus = {"good": {"machine-0": 0.5, "machine-1": 0.7}}
    lines = spread.target_table(recall, rates, vus, ["good", "noisy", "bad", "absent"])
    cells = {line.split(" | ")[0].strip("| "): line.strip("|").split(" | ") for line in lines[2:]}
    met = {row: float(c[4]) for row, c in cells.items()}
    assert met["good"] == 1.0 and met["bad"] == 0.0 and 0.0 < met["noisy"] < 1.0
    assert "absent" not in met
    assert cells["good"][5].strip().startswith("0.600 [") and cells["bad"][5].strip() == "—"


def test_paired_differences_count_the_machines_each_way() -> None:
    table = {
        "a": {"m1": 0.5, "m2": 0.7, "m3": 0.2, "m4": 0.4, "m5": float("nan")},
        "b": {"m1": 0.4, "m2": 0.7, "m3": 0.3, "m4": 0.1, "m5": 0.9},
    }
    (line,) = spread.paired_table(table, [("a", "b")], "VUS-PR")[2:]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "a − b" and cells[1] == "4"  # m5 has no value for a
    assert cells[2].startswith(f"{np.mean([0.1, 0.0, -0.1, 0.3]):.3f} [")
    assert cells[3] == "2 / 1 / 1"


def test_the_markdown_reader_reads_back_what_the_report_writes() -> None:
    rows = [f"{family}+{DEFAULT_SCORING}" for family in ("tvnet", "dense_ae")] + ["pca"]
    rng = np.random.default_rng(2)
    results: dict[str, dict[str, dict[str, object]]] = {}
    for row in rows:
        for i in range(5):
            fixed = {
                "event_recall": float(rng.uniform()),
                "false_alerts_per_day": float(rng.uniform(0, 3)),
            }
            record = {"alerts": {"fixed": fixed}, "metrics": {"vus_pr": float(rng.uniform())}}
            results.setdefault(row, {})[f"machine-{i}"] = record
    del results["pca"]["machine-3"]  # a missing cell reads as absent
    text = "\n".join(
        [
            spread.RECALL_HEADING,
            "",
            *alert_machine_table(results, rows, "fixed"),
            "",
            spread.VUS_HEADING,
            "",
            *machine_table(results, rows, "vus_pr"),
            "",
        ]
    )
    exact = spread.from_results(results)
    read = spread.from_markdown(text)
    for written, back, places in zip(exact, read, (3, 1, 3), strict=True):
        assert set(back) == set(written)
        for row in written:
            assert set(back[row]) == set(written[row])
            for machine, value in written[row].items():
                assert back[row][machine] == pytest.approx(value, abs=0.51 * 10**-places)
    assert spread.default_rows(set(read[0])) == rows[:2]
    assert spread.lead_pairs(set(read[2])) == [(rows[0], rows[1])]


def test_a_markdown_without_the_tables_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="Event recall / false alerts"):
        spread.from_markdown("# nothing here\n")
