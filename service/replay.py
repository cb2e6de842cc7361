"""``vigil replay``: stream a series into ``POST /score`` in chunks and print alerts as they come."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from models.tables import TableError, parse_table, read_text


def read_series(path: Path) -> np.ndarray[Any, np.dtype[np.float64]]:
    """``.npy``, or a text table as ``vigil train`` reads it (``models.tables``: a header, a time column)."""
    if path.suffix == ".npy":
        return np.asarray(np.load(path), dtype=np.float64)
    return np.asarray(parse_table(read_text(path), str(path)).values, dtype=np.float64)


def format_alert(event: dict[str, Any]) -> str:
    sensors = ", ".join(event.get("sensors", [])[:5])
    return (
        f"ALERT {event['state']:<9} {event['severity']:<8} stream={event['stream_id']} ts={event['ts']:.0f} "
        f"peak={event['peak_score']:.3f} threshold={event['threshold']:.3f} sensors=[{sensors}]"
    )


def replay(
    url: str,
    stream_id: str,
    data: Path,
    rate: float | None,
    chunk: int,
    model: str | None,
    api_key: str | None,
    quiet: bool,
    start_ts: float = 0.0,
) -> int:
    """Send the series row by row (ts = start_ts + row index); returns a process exit code."""
    try:
        series = read_series(data)
    except (TableError, OSError, ValueError) as exc:
        print(f"vigil replay: {exc}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    levels = {"normal": 0, "warning": 0, "critical": 0}
    dropped = {"duplicate": 0, "stale": 0}
    n_alerts, started = 0, time.perf_counter()
    with httpx.Client(base_url=url, headers=headers, timeout=30.0) as client:
        for offset in range(0, len(series), chunk):
            rows = series[offset : offset + chunk]
            body: dict[str, Any] = {
                "stream_id": stream_id,
                "points": [
                    {"ts": start_ts + offset + i, "values": row.tolist()} for i, row in enumerate(rows)
                ],
            }
            if model:
                body["model"] = model
            response = client.post("/score", json=body)
            if response.status_code != 200:
                print(f"error {response.status_code}: {response.text}", file=sys.stderr)
                return 1
            result = response.json()
            for point in result["dropped"]:
                dropped[point["reason"]] += 1
            for item in result["scores"]:
                levels[item["level"]] += 1
                if not quiet and item["level"] != "normal":
                    top = ", ".join(c["sensor"] for c in item["contributions"])
                    print(f"  ts={item['ts']:.0f} score={item['score']:.3f} {item['level']} [{top}]")
            for event in result["alerts"]:
                n_alerts += 1
                print(format_alert(event), flush=True)
            if rate:
                target = (offset + len(rows)) / rate
                delay = target - (time.perf_counter() - started)
                if delay > 0:
                    time.sleep(delay)
    elapsed = time.perf_counter() - started
    print(
        f"replayed {len(series)} points of {data} as stream {stream_id!r} in {elapsed:.1f} s "
        f"({len(series) / elapsed:.0f} points/s): {levels['normal']} normal, {levels['warning']} warning, "
        f"{levels['critical']} critical; {n_alerts} alert events",
        flush=True,
    )
    if dropped["duplicate"] or dropped["stale"]:
        print(
            f"{dropped['duplicate']} points were refused as duplicates and {dropped['stale']} as stale: stream "
            f"{stream_id!r} already held points at or after these timestamps (replay under another "
            "--stream-id, or from a later --start-ts)",
            flush=True,
        )
    return 0
