"""What every benchmark prints and saves: the machine, the command line, markdown tables, raw JSON results.

Each script prints its header first (so a pasted table always travels with the machine and the command that
made it) and saves the raw numbers under ``artifacts/bench/results/<benchmark>-<UTC time>.json``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "artifacts" / "bench" / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - a missing optional library is reported, not fatal
        return "-"


def _redis_version() -> str:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return "-"
    return next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), "-")


def machine() -> dict[str, Any]:
    """Cores, CPU model, load average and the versions that decide the numbers."""
    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "onnxruntime": _version("onnxruntime"),
        "numpy": _version("numpy"),
        "redis_server": _redis_version(),
    }


def command_line() -> str:
    """The command that reproduces this run, as typed from the repository root."""
    module = Path(sys.argv[0]).resolve()
    try:
        name = "bench." + module.relative_to(ROOT / "bench").with_suffix("").as_posix().replace("/", ".")
        head = [".venv/bin/python", "-m", name]
    except ValueError:
        head = [sys.executable, sys.argv[0]]
    return shlex.join(head + sys.argv[1:])


def print_header(title: str) -> dict[str, Any]:
    info = machine()
    print(f"# {title}\n")
    print(f"- command: `{command_line()}`")
    print(
        f"- machine: {info['nproc']} cores ({info['affinity']} usable), {info['cpu_model']}, "
        f"load average {' '.join(info['loadavg'])}"
    )
    print(
        f"- date: {info['date_utc']}; Python {info['python']}, ONNX Runtime {info['onnxruntime']}, "
        f"redis-server {info['redis_server']}\n"
    )
    return info


def fmt(value: Any, digits: int = 1) -> str:
    """Numbers for tables: thousands separators, fixed decimals, '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    if title:
        print(f"\n## {title}\n")
    cells = [[fmt(v) for v in row] for row in rows]
    print("| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" for _ in headers) + " |")
    for row in cells:
        print("| " + " | ".join(row) + " |")
    print(flush=True)


@dataclass
class Results:
    """Raw results of one benchmark run, written as JSON when the run ends (also when it fails midway)."""

    benchmark: str
    machine: dict[str, Any]
    command: str = field(default_factory=command_line)
    records: list[dict[str, Any]] = field(default_factory=list)

    def add(self, **record: Any) -> None:
        self.records.append(record)

    def save(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        path = RESULTS_DIR / f"{self.benchmark}-{stamp}.json"
        body: dict[str, Any] = {"benchmark": self.benchmark, "machine": self.machine, "command": self.command}
        body["records"] = self.records
        path.write_text(json.dumps(body, indent=2, default=_jsonable) + "\n")
        print(f"raw results: {path.relative_to(ROOT)}")
        return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def percentiles_ms(
    latencies_s: Sequence[float] | np.ndarray, points: Sequence[float] = (50, 95, 99)
) -> list[float]:
    """Latency percentiles in milliseconds (NaN when there is no sample)."""
    if len(latencies_s) == 0:
        return [float("nan")] * len(points)
    values = np.percentile(np.asarray(latencies_s, dtype=np.float64), points) * 1000.0
    return [float(v) for v in values]


def median_of(runs: Sequence[dict[str, Any]], key: str) -> float:
    """Median of one numeric field over repeated runs (``--repeat N``); NaN when no run has it."""
    values = [float(r[key]) for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")
