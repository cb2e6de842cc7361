"""Drive the alert lifecycle's two implementations with the same points: the Lua in a real Redis and the
pure-Python reference (models/lifecycle.py). Both return the events, the levels and the state left behind."""

from __future__ import annotations

from dataclasses import astuple
from typing import Any

import redis

from models.lifecycle import LevelThresholds, StreamAlertState, advance
from service.alert_scripts import ALERT_LUA
from service.alerts import PointColumns, alert_key, lifecycle_args, outbox_key

Point = tuple[float, float, str]  # ts, score, comma-joined sensors
KEY_STREAM = "lifecycle-test"


def run_reference(
    levels: LevelThresholds, chunks: list[list[Point]]
) -> tuple[list[tuple[Any, ...]], str, dict]:
    state = StreamAlertState()
    events: list[tuple[Any, ...]] = []
    level_text = ""
    for chunk in chunks:
        result = advance(state, levels, chunk)
        events.extend(astuple(e) for e in result.events)
        level_text += "".join(result.levels)
    return events, level_text, reference_state(state)


def run_lua(
    client: redis.Redis, levels: LevelThresholds, chunks: list[list[Point]]
) -> tuple[list[tuple[Any, ...]], str, dict]:
    client.delete(alert_key(KEY_STREAM), outbox_key(KEY_STREAM))
    script = client.register_script(ALERT_LUA)
    events: list[tuple[Any, ...]] = []
    level_text = ""
    for chunk in chunks:
        if not chunk:
            continue
        columns = PointColumns(*(list(field) for field in zip(*chunk, strict=True)))
        raw_events, raw_levels, _ = script(
            keys=[alert_key(KEY_STREAM), outbox_key(KEY_STREAM)],
            args=lifecycle_args(levels, 3600, columns),
        )
        for state, severity, started, ts, peak, sensors, escalated, threshold in raw_events:
            events.append(
                (
                    state.decode(),
                    severity.decode(),
                    float(started),
                    float(ts),
                    float(peak),
                    sensors.decode(),
                    escalated == b"1",
                    float(threshold),
                )
            )
        level_text += raw_levels.decode()
    raw = {k.decode(): v.decode() for k, v in client.hgetall(alert_key(KEY_STREAM)).items()}
    return events, level_text, lua_state(raw)


def reference_state(state: StreamAlertState) -> dict:
    return {
        "state": state.state,
        "severity": state.severity,
        "started": state.started,
        "peak": state.peak,
        "peak_sensors": state.peak_sensors,
        "flags": state.flags,
        "below": state.below,
        "last_ts": state.last_ts,
        "seen": state.seen,
        "mean": state.mean,
        "var": state.var,
    }


def lua_state(raw: dict[str, str]) -> dict:
    if not raw:
        return reference_state(StreamAlertState())
    return {
        "state": raw["state"],
        "severity": raw["severity"],
        "started": float(raw["started"]),
        "peak": float(raw["peak"]),
        "peak_sensors": raw["peak_sensors"],
        "flags": raw["flags"],
        "below": int(raw["below"]),
        "last_ts": float(raw["last_ts"]) if "last_ts" in raw else None,
        "seen": int(raw["seen"]),
        "mean": float(raw["mean"]),
        "var": float(raw["var"]),
    }
