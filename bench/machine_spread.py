"""How far the evaluation's means over machines can be trusted: 95 % bootstrap intervals over the machines.

The SMD targets are means over 14 machines, and machines differ far more than runs do (event recall of one row
goes from 0.45 to 1.0 across them). Resampling the machines with replacement says how much a mean could move
with another draw of machines like these; pairing two rows on the same machines says whether one row beats
another beyond that spread. Percentile intervals of 10,000 resamples, seeded: the same figures every run.

    .venv/bin/python -m bench.machine_spread [--results artifacts/eval | --markdown EVALUATION.md]

``--results`` reads the saved results of ``bench/evaluate_smd.py`` (exact figures); ``--markdown`` reads the
per-machine tables that command wrote into EVALUATION.md (false alerts a day there have one decimal, so their
means differ from the exact ones by up to 0.05). ``bench/smd_report.py`` prints the same tables into
EVALUATION.md's generated block.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.smd_rows import DEFAULT_SCORING

RESAMPLES = 10_000
# The alert target of issue 13 (EVALUATION.md "Targets"): mean event recall and false alerts a day.
TARGET_RECALL, TARGET_FALSE_PER_DAY = 0.80, 1.0
LEADS = ("tvnet", "convtimenet")
BASELINES = ("dense_ae", "lstm_ae", "pca")

PerMachine = dict[str, dict[str, float]]  # row -> machine -> value


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def resample_means(values: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> np.ndarray:
    """Means of ``values`` [machines, ...] over ``resamples`` draws of as many machines, with replacement; every
    column of a draw uses the same machines (so paired and joint figures stay paired)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(values), size=(resamples, len(values)))
    means: np.ndarray = values[picks].mean(axis=1)
    return means


def interval(values: list[float], resamples: int = RESAMPLES, seed: int = 0) -> Interval:
    """The mean of ``values`` (one per machine) and the 2.5th and 97.5th percentiles of its resampled means."""
    array = np.asarray(values, dtype=np.float64)
    means = resample_means(array, resamples, seed)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float(array.mean()), float(low), float(high))


def common_machines(table: PerMachine, rows: list[str]) -> list[str]:
    """The machines every one of ``rows`` has a finite value for, sorted."""
    sets = [{m for m, v in table[row].items() if v == v} for row in rows]
    return sorted(set.intersection(*sets)) if sets else []


def target_table(
    recall: PerMachine, false_per_day: PerMachine, vus_pr: PerMachine, rows: list[str]
) -> list[str]:
    """Event recall and false alerts a day with their intervals, the share of resamples whose means meet both
    bounds of the target together, and VUS-PR with its interval."""
    lines = [
        "| row | machines | event recall mean [95 % interval] | false alerts / day mean [95 % interval] "
        f"| resamples with recall >= {TARGET_RECALL:.2f} and <= {TARGET_FALSE_PER_DAY:g} a day "
        "| VUS-PR mean [95 % interval] |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row not in recall or row not in false_per_day:
            continue
        machines = sorted(
            m for m in set(recall[row]) & set(false_per_day[row]) if recall[row][m] == recall[row][m]
        )
        if len(machines) < 2:
            continue
        pairs = np.array([[recall[row][m], false_per_day[row][m]] for m in machines])
        means = resample_means(pairs)
        met = float(np.mean((means[:, 0] >= TARGET_RECALL) & (means[:, 1] <= TARGET_FALSE_PER_DAY)))
        vus = [v for v in vus_pr.get(row, {}).values() if v == v]
        lines.append(
            f"| {row} | {len(machines)} | {interval(list(pairs[:, 0]))} | {interval(list(pairs[:, 1]))} "
            f"| {met:.2f} | {interval(vus) if len(vus) > 1 else '—'} |"
        )
    return lines


def paired_table(table: PerMachine, pairs: list[tuple[str, str]], label: str) -> list[str]:
    """For each (a, b): the mean over machines of a − b with its interval, and on how many machines a is
    higher, equal, lower."""
    lines = [
        f"| {label}: row a − row b | machines | mean difference [95 % interval] | a higher / equal / lower |",
        "|---|---|---|---|",
    ]
    for a, b in pairs:
        if a not in table or b not in table:
            continue
        machines = common_machines(table, [a, b])
        if len(machines) < 2:
            continue
        differences = [table[a][m] - table[b][m] for m in machines]
        higher = sum(d > 0 for d in differences)
        lower = sum(d < 0 for d in differences)
        lines.append(
            f"| {a} − {b} | {len(machines)} | {interval(differences)} | "
            f"{higher} / {len(machines) - higher - lower} / {lower} |"
        )
    return lines


def default_rows(present: set[str]) -> list[str]:
    """The rows as ``vigil train`` ships them (default scoring), leads first."""
    return [f"{f}+{DEFAULT_SCORING}" for f in (*LEADS, *BASELINES) if f"{f}+{DEFAULT_SCORING}" in present]


def lead_pairs(present: set[str]) -> list[tuple[str, str]]:
    """Each lead family against each baseline, both with the default scoring."""
    return [
        (f"{lead}+{DEFAULT_SCORING}", f"{base}+{DEFAULT_SCORING}")
        for lead in LEADS
        for base in BASELINES
        if {f"{lead}+{DEFAULT_SCORING}", f"{base}+{DEFAULT_SCORING}"} <= present
    ]


def spread_lines(recall: PerMachine, false_per_day: PerMachine, vus_pr: PerMachine) -> list[str]:
    """The two tables of this module for the default-scoring rows present."""
    rows = default_rows(set(recall))
    return [
        *target_table(recall, false_per_day, vus_pr, rows),
        "",
        *paired_table(vus_pr, lead_pairs(set(vus_pr)), "VUS-PR"),
    ]


def from_results(results: dict[str, dict[str, dict[str, Any]]]) -> tuple[PerMachine, PerMachine, PerMachine]:
    """Event recall and false alerts a day (fixed thresholds) and VUS-PR per row and machine, from the saved
    results of ``bench/evaluate_smd.py`` (``bench.smd_report.load_results``)."""
    recall: PerMachine = {}
    false_per_day: PerMachine = {}
    vus_pr: PerMachine = {}
    for row, machines in results.items():
        for machine, record in machines.items():
            alerts = record.get("alerts", {}).get("fixed")
            if alerts is not None:
                recall.setdefault(row, {})[machine] = float(alerts["event_recall"])
                false_per_day.setdefault(row, {})[machine] = float(alerts["false_alerts_per_day"])
            vus = record.get("metrics", {}).get("vus_pr")
            if vus is not None:
                vus_pr.setdefault(row, {})[machine] = float(vus)
    return recall, false_per_day, vus_pr


def markdown_table(text: str, heading: str) -> tuple[list[str], list[list[str]]]:
    """The header and body cells of the first table after the line ``heading``."""
    lines = text.splitlines()
    try:
        start = lines.index(heading)
    except ValueError:
        raise ValueError(f"no line {heading!r} in the markdown") from None
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif rows:
            break
    if len(rows) < 2:
        raise ValueError(f"no table under {heading!r}")
    return rows[0], rows[2:]  # rows[1] is the |---| line


def _cell(text: str) -> float:
    return float("nan") if text in ("—", "") else float(text)


RECALL_HEADING = (
    "### Event recall / false alerts a day per machine (fixed thresholds; plain and default scoring)"
)
VUS_HEADING = "### VUS-PR per machine"


def from_markdown(text: str) -> tuple[PerMachine, PerMachine, PerMachine]:
    """The same maps as :func:`from_results`, from the per-machine tables of EVALUATION.md's generated block."""
    header, body = markdown_table(text, RECALL_HEADING)
    recall: PerMachine = {}
    false_per_day: PerMachine = {}
    for cells in body:
        machine = cells[0]
        for row, cell in zip(header[1:], cells[1:], strict=True):
            if cell == "—":
                continue
            hit, _, per_day = cell.partition(" / ")
            recall.setdefault(row, {})[machine] = _cell(hit)
            false_per_day.setdefault(row, {})[machine] = _cell(per_day)
    header, body = markdown_table(text, VUS_HEADING)
    vus_pr: PerMachine = {}
    for cells in body:
        for row, cell in zip(header[1:], cells[1:], strict=True):
            if cell != "—":
                vus_pr.setdefault(row, {})[cells[0]] = _cell(cell)
    return recall, false_per_day, vus_pr


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--results", type=Path, help="bench/evaluate_smd.py's output folder")
    source.add_argument("--markdown", type=Path, help="EVALUATION.md (its generated per-machine tables)")
    args = parser.parse_args()
    if args.results is not None:
        from bench.smd_report import load_results

        maps = from_results(load_results(args.results))
        origin = f"the saved results in {args.results}"
    else:
        path = args.markdown or Path("EVALUATION.md")
        maps = from_markdown(path.read_text())
        origin = f"the per-machine tables of {path} (false alerts a day to one decimal)"
    print(f"# 95 % bootstrap intervals over the machines ({RESAMPLES:,} resamples, seed 0), from {origin}\n")
    print("\n".join(spread_lines(*maps)))


if __name__ == "__main__":
    main()
