"""EVALUATION.md's generated block from the saved results of bench/evaluate_smd.py: alert tables (fixed and
per-stream thresholds), their intervals over the machines (bench/machine_spread.py), the oracle table, ranking
and point metrics, per-machine tables and time."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.machine_spread import from_results, spread_lines
from bench.smd_rows import (
    ALERT_METRICS,
    CALIBRATIONS,
    DEFAULT_SCORING,
    FAMILIES,
    FLEETS,
    METRICS,
    SAMPLING_INTERVAL_S,
    VARIANTS,
)


def load_results(out: Path) -> dict[str, dict[str, dict[str, Any]]]:
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted((out / "results").glob("*/*.json")):
        record = json.loads(path.read_text())
        results.setdefault(record["family"], {})[record["machine"]] = record
    return results


def fmt(value: float | None) -> str:
    return "—" if value is None or value != value else f"{value:.3f}"


def summary_table(results: dict[str, dict[str, dict[str, Any]]], families: list[str]) -> list[str]:
    lines = ["| family | machines | " + " | ".join(f"{label} mean / median" for _, label in METRICS) + " |"]
    lines.append("|---|---|" + "---|" * len(METRICS))
    for family in families:
        runs = list(results.get(family, {}).values())
        if not runs:
            continue
        cells = []
        for key, _ in METRICS:
            values = [r["metrics"][key] for r in runs if r["metrics"].get(key) is not None]
            values = [v for v in values if v == v]
            cells.append(
                f"{fmt(statistics.mean(values))} / {fmt(statistics.median(values))}" if values else "—"
            )
        lines.append(f"| {family} | {len(runs)} | " + " | ".join(cells) + " |")
    return lines


def _mean_median(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v == v]
    if not values:
        return math.nan, math.nan
    return statistics.mean(values), statistics.median(values)


def alert_table(results: dict[str, dict[str, dict[str, Any]]], families: list[str], mode: str) -> list[str]:
    """Alerts through the lifecycle: mean / median over machines (delay: median over machines of each machine's
    median delay), with the labelled share beside time in alert."""
    head = " | ".join(f"{label}" for _, label in ALERT_METRICS)
    lines = [
        f"| row | machines | VUS-PR | {head} | labelled share | (k, n, m) |",
        "|---|---|---|" + "---|" * (len(ALERT_METRICS) + 2),
    ]
    for family in families:
        runs = [r for r in results.get(family, {}).values() if "alerts" in r]
        if not runs:
            continue
        cells = []
        for key, _ in ALERT_METRICS:
            mean, median = _mean_median([r["alerts"][mode][key] for r in runs])
            cells.append(f"{fmt(median)}" if key == "median_delay_points" else f"{fmt(mean)} / {fmt(median)}")
        vus = _mean_median([r["metrics"]["vus_pr"] for r in runs])
        labelled = _mean_median([r["alerts"][mode]["labelled_share"] for r in runs])
        policies = Counter(
            (r["alert_policy"]["k"], r["alert_policy"]["n"], r["alert_policy"]["m"]) for r in runs
        )
        common = ", ".join(f"{k}/{n}/{m} ×{c}" for (k, n, m), c in policies.most_common(2))
        lines.append(
            f"| {family} | {len(runs)} | {fmt(vus[0])} / {fmt(vus[1])} | "
            + " | ".join(cells)
            + f" | {fmt(labelled[0])} | {common} |"
        )
    return lines


def ceiling_table(results: dict[str, dict[str, dict[str, Any]]], families: list[str]) -> list[str]:
    """The oracle: the best event recall one threshold reaches on each machine's test data within 1 false
    alert a day and time in alert <= 2x labelled, beside what the calibrated thresholds reached."""
    lines = [
        "| row | machines | oracle event recall mean / median | calibrated (fixed) event recall mean / median "
        "| machines where no threshold fits the budget |",
        "|---|---|---|---|---|",
    ]
    for family in families:
        runs = [r for r in results.get(family, {}).values() if "alert_ceiling" in r]
        if not runs:
            continue
        oracle = _mean_median([r["alert_ceiling"]["event_recall"] for r in runs])
        fixed = _mean_median([r["alerts"]["fixed"]["event_recall"] for r in runs])
        none = sum(1 for r in runs if r["alert_ceiling"]["warning"] != r["alert_ceiling"]["warning"])
        lines.append(
            f"| {family} | {len(runs)} | {fmt(oracle[0])} / {fmt(oracle[1])} | {fmt(fixed[0])} / "
            f"{fmt(fixed[1])} | {none} |"
        )
    return lines


def alert_machine_table(
    results: dict[str, dict[str, dict[str, Any]]], families: list[str], mode: str
) -> list[str]:
    """Per machine: event recall / false alerts a day, for each row."""
    present = [f for f in families if f in results]
    machines = sorted({m for f in present for m in results[f]})
    lines = ["| machine | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for machine in machines:
        cells = []
        for f in present:
            alerts = results[f].get(machine, {}).get("alerts", {}).get(mode)
            cells.append(
                f"{fmt(alerts['event_recall'])} / {alerts['false_alerts_per_day']:.1f}" if alerts else "—"
            )
        lines.append(f"| {machine} | " + " | ".join(cells) + " |")
    return lines


def machine_table(results: dict[str, dict[str, dict[str, Any]]], families: list[str], key: str) -> list[str]:
    present = [f for f in families if f in results]
    machines = sorted({m for f in present for m in results[f]})
    lines = ["| machine | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for machine in machines:
        row = [fmt(results[f].get(machine, {}).get("metrics", {}).get(key)) for f in present]
        lines.append(f"| {machine} | " + " | ".join(row) + " |")
    return lines


def refused_lines(out: Path) -> list[str]:
    """Runs whose bundle the training pipeline's gates refused (parity, divergence): no score, said so."""
    lines = [
        f"- `{path.parent.name}` on {path.stem}: refused, {path.read_text().strip()}"
        for path in sorted((out / "refused").glob("*/*.txt"))
        if not (out / "results" / path.parent.name / f"{path.stem}.json").exists()
    ]
    return ["Runs without a score (the pipeline refused the bundle):", "", *lines, ""] if lines else []


def _train_s(row: str, runs: list[dict[str, Any]]) -> float:
    """Training time of a row: none for calibration rows, once for a fleet, else the sum over machines."""
    if row in CALIBRATIONS or not runs:
        return 0.0
    if row in FLEETS:
        return float(max(r["train_s"] for r in runs))
    return float(sum(r["train_s"] for r in runs))


def timing_table(results: dict[str, dict[str, dict[str, Any]]], families: list[str]) -> list[str]:
    lines = [
        "| row | train s (sum) | calibrate s (sum) | evaluate s (sum) | epochs run (median) |",
        "|---|---|---|---|---|",
    ]
    for family in families:
        runs = list(results.get(family, {}).values())
        if runs:
            epochs = statistics.median(r.get("epochs_run", 0) for r in runs)
            train = _train_s(family, runs)
            calibrate = sum(r.get("calibrate_s", 0.0) for r in runs)
            lines.append(
                f"| {family} | {train:.0f} | {calibrate:.0f} | {sum(r['evaluate_s'] for r in runs):.0f} | "
                f"{epochs:g} |"
            )
    return lines


def headline_rows(rows: list[str]) -> list[str]:
    """The rows the per-machine tables show (one column each): every family with its plain and its default
    scoring, the fleet, and the training variants; the ablation rows are in the summary tables only."""
    shown = {*FAMILIES, *VARIANTS, *FLEETS, *(f"{row}+{DEFAULT_SCORING}" for row in [*FAMILIES, *FLEETS])}
    return [row for row in rows if row in shown]


def write_tables(out: Path, families: list[str], command: str, path: Path) -> None:
    results = load_results(out)
    total = sum(
        _train_s(row, list(runs.values()))
        + sum(r.get("calibrate_s", 0.0) + r["evaluate_s"] for r in runs.values())
        for row, runs in results.items()
    )
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    run_file = out / "run.json"
    last_run = ""
    if run_file.exists():
        run = json.loads(run_file.read_text())
        last_run = (
            f"; wall clock of the last run ({run['rows']} rows x {run['machines']} machines, "
            f"{run['jobs']} process(es), {run['date']}): {run['wall_s'] / 60:.1f} min"
        )
    text = [
        "<!-- generated by bench/evaluate_smd.py: edit the script, not this block -->",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} cores ({cpu}), {datetime.now(UTC):%Y-%m-%d}; "
        f"trainings, calibrations and evaluations summed over rows: {total / 60:.1f} min{last_run}; "
        f"{SAMPLING_INTERVAL_S:g} s between points.",
        "",
        "### Alerts as an operator lives them (fixed thresholds), mean / median over the machines",
        "",
        *alert_table(results, families, "fixed"),
        "",
        "Rows `*_adaptive` are calibrated for per-stream thresholds and their bundles serve them: what they "
        "page is in the next table; here, their anchors served as fixed thresholds (which no bundle does).",
        "",
        "### The same with thresholds that follow each stream (adaptive, from the test period's own start)",
        "",
        *alert_table(results, families, "adaptive"),
        "",
        "### How far the means can be trusted: 95 % bootstrap intervals over the machines (default scoring)",
        "",
        *spread_lines(*from_results(results)),
        "",
        "### What the scores could reach: an oracle threshold per machine (chosen on test data: a diagnostic, "
        "never a result)",
        "",
        *ceiling_table(results, families),
        "",
        "### Event recall / false alerts a day per machine (fixed thresholds; plain and default scoring)",
        "",
        *alert_machine_table(results, headline_rows(families), "fixed"),
        "",
        "### Ranking and point metrics, mean / median over the machines",
        "",
        *summary_table(results, families),
        "",
        *refused_lines(out),
        "### VUS-PR per machine",
        "",
        *machine_table(results, headline_rows(families), "vus_pr"),
        "",
        "### Unadjusted point F1 at the calibrated warning threshold, per machine",
        "",
        *machine_table(results, headline_rows(families), "point_f1"),
        "",
        "### Time",
        "",
        *timing_table(results, families),
        "<!-- end of generated block -->",
    ]
    block = "\n".join(text) + "\n"
    if path.exists():
        current = path.read_text()
        start = current.find("<!-- generated by bench/evaluate_smd.py")
        end = current.find("<!-- end of generated block -->")
        if start != -1 and end != -1:
            block = current[:start] + block + current[end + len("<!-- end of generated block -->\n") :]
    path.write_text(block)
    print(block)
