"""The events of ``vigil:alerts``: their fields, their ids (ordering, validation) and their decoding. Written by
the alert tracker (``service.alerts``), read by the feed, ``GET /alerts`` and alert delivery."""

from __future__ import annotations

import logging
import re
from typing import Any

from service.redis_clients import text

log = logging.getLogger(__name__)

EVENTS_KEY = "vigil:alerts"
# The fields of an event as the Lua returns them, after the stream id and model.
EVENT_FIELDS = (
    "stream_id",
    "model",
    "state",
    "severity",
    "started_ts",
    "ts",
    "peak_score",
    "sensors",
    "escalated",
    "threshold",
)
_EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_UINT64_MAX = 2**64 - 1


def is_event_id(value: str) -> bool:
    """``<ms>-<seq>``, both ASCII digits below 2**64: an id Redis accepts (``\\d`` would admit any Unicode
    digit, and a longer number makes XRANGE fail)."""
    if not _EVENT_ID.fullmatch(value):
        return False
    ms, seq = value.split("-")
    return int(ms) <= _UINT64_MAX and int(seq) <= _UINT64_MAX


LAST_EVENT_ID = f"{2**64 - 1}-{2**64 - 1}"  # the largest id a Redis stream entry can have


def id_key(entry_id: str) -> tuple[int, int]:
    """An event id as a number pair, for ordering (as strings, "10-0" < "9-0")."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def decode_or_skip(entry_id: bytes | str | None, fields: dict[Any, Any] | None) -> dict[str, Any] | None:
    """The event of a stream entry, or None (logged) for an entry that is no alert event (written by hand or by
    another tool): readers pass over it instead of failing on it."""
    try:
        return decode_event(entry_id, fields or {})
    except (KeyError, ValueError):
        log.error("entry %s of %s is no alert event; skipped", text(entry_id or b""), EVENTS_KEY)
        return None


def decode_event(entry_id: bytes | str | None, fields: dict[Any, Any]) -> dict[str, Any]:
    raw = {text(k): text(v) for k, v in fields.items()}
    return {
        "id": text(entry_id or b""),
        "stream_id": raw["stream_id"],
        "model": raw["model"],
        "state": raw["state"],
        "severity": raw["severity"],
        "ts": float(raw["ts"]),
        "started_ts": float(raw["started_ts"]),
        "peak_score": float(raw["peak_score"]),
        "threshold": float(raw["threshold"]),
        "sensors": [s for s in raw.get("sensors", "").split(",") if s],
        "escalated": raw.get("escalated") == "1",
    }
