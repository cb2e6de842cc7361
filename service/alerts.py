"""Alert lifecycle per stream (ok → pending → firing → resolved), state in Redis so replicas agree.

Firing needs k of the last n points at or over the warning threshold, or one at or over critical; resolving
needs m points in a row under ``exit_ratio × warning`` (hysteresis). Severity follows the highest level
crossed. Transitions are returned as events and appended to a bounded Redis Stream (``vigil:alerts``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.errors import StoreUnavailable
from service.settings import AlertSettings

log = logging.getLogger(__name__)

EVENTS_KEY = "vigil:alerts"
MAX_UNPUBLISHED_EVENTS = 100_000  # held after failed appends; beyond it the oldest are dropped
_EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
_UINT64_MAX = 2**64 - 1


def is_event_id(value: str) -> bool:
    """``<ms>-<seq>``, both ASCII digits below 2**64: an id Redis accepts (``\\d`` would admit any Unicode
    digit, and a longer number makes XRANGE fail)."""
    if not _EVENT_ID.fullmatch(value):
        return False
    ms, seq = value.split("-")
    return int(ms) <= _UINT64_MAX and int(seq) <= _UINT64_MAX


# KEYS: alert state hash. ARGV: warning, critical, exit, k, n, m, ttl, then per point: ts, score, sensors.
ALERT_LUA = """
local warn, crit, exitv = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local k, n, m, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local s = redis.call('HMGET', KEYS[1], 'state', 'severity', 'started', 'peak', 'peak_sensors', 'flags', 'below',
                     'last_ts')
local state, severity, started = s[1] or 'ok', s[2] or 'warning', s[3] or '0'
local peak, peak_sensors, flags = tonumber(s[4] or '0'), s[5] or '', s[6] or ''
local below, last_ts = tonumber(s[7] or '0'), s[8] and tonumber(s[8]) or nil
local events = {}
local function emit(st, ts, escalated)
  events[#events + 1] = {st, severity, started, ts, tostring(peak), peak_sensors, escalated and '1' or '0'}
end
for i = 8, #ARGV, 3 do
  local ts_text, score, sensors = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local ts = tonumber(ts_text)
  if last_ts == nil or ts > last_ts then
    last_ts = ts
    local over = score >= warn
    flags = string.sub(flags .. (over and '1' or '0'), -n)
    local _, hits = string.gsub(flags, '1', '')
    if state == 'ok' and over then
      state, severity, started, peak, peak_sensors, below = 'pending', 'warning', ts_text, score, sensors, 0
      emit('pending', ts_text)
    end
    if state == 'pending' then
      if score > peak then peak, peak_sensors = score, sensors end
      if score >= crit then severity = 'critical' end
      if hits >= k or score >= crit then
        state = 'firing'
        emit('firing', ts_text)
      elseif hits == 0 then
        state = 'ok'
        emit('cancelled', ts_text)
      end
    elseif state == 'firing' then
      if score > peak then peak, peak_sensors = score, sensors end
      if score >= crit and severity ~= 'critical' then
        severity = 'critical'
        emit('firing', ts_text, true)
      end
      if score < exitv then below = below + 1 else below = 0 end
      if below >= m then
        emit('resolved', ts_text)
        state, flags, below, peak, peak_sensors = 'ok', '', 0, 0, ''
      end
    end
  end
end
redis.call('HSET', KEYS[1], 'state', state, 'severity', severity, 'started', started, 'peak', tostring(peak),
           'peak_sensors', peak_sensors, 'flags', flags, 'below', below, 'last_ts', tostring(last_ts))
redis.call('EXPIRE', KEYS[1], ttl)
return events
"""


def alert_key(stream_id: str) -> str:
    return f"vigil:{{{stream_id}}}:a"


@dataclass(frozen=True)
class ScoredPoint:
    ts: float
    score: float
    sensors: list[str]


class AlertTracker:
    def __init__(
        self, redis: Redis, settings_for: Callable[[str], AlertSettings], ttl_s: int, stream_maxlen: int
    ) -> None:
        self._redis = redis
        self._settings_for = settings_for
        self._ttl_s = ttl_s
        self._maxlen = stream_maxlen
        self._script = redis.register_script(ALERT_LUA)
        # Events whose XADD failed after their transition was stored: published first, next time (this process).
        self._unpublished: list[dict[str, Any]] = []
        self._publishing = asyncio.Lock()

    async def observe(
        self, stream_id: str, model: str, warning: float, critical: float, points: list[ScoredPoint]
    ) -> list[dict[str, Any]]:
        """Advance the stream's alert state over ``points`` (ts order); returns the events it caused."""
        if not points:
            return []
        cfg = self._settings_for(model)
        args: list[str | int | float] = [
            repr(warning),
            repr(critical),
            repr(warning * cfg.exit_ratio),
            cfg.k,
            cfg.n,
            cfg.m,
            self._ttl_s,
        ]
        for point in points:
            args.extend((repr(point.ts), repr(point.score), ",".join(point.sensors)))
        reply = await self._script(keys=[alert_key(stream_id)], args=args)
        events = []
        for state, severity, started, ts, peak, sensors, escalated in reply:
            severity_text = severity.decode()
            events.append(
                {
                    "stream_id": stream_id,
                    "model": model,
                    "state": state.decode(),
                    "severity": severity_text,
                    "ts": float(ts),
                    "started_ts": float(started),
                    "peak_score": float(peak),
                    "threshold": critical if severity_text == "critical" else warning,
                    "sensors": [s for s in sensors.decode().split(",") if s],
                    "escalated": escalated == b"1",
                }
            )
        for event in events:
            event["id"] = await self.publish(event)
        return events

    async def publish(self, event: dict[str, Any]) -> str | None:
        """Append an event to the bounded alert stream and return its id. When Redis fails (the transition is
        already stored, so it will not be raised again) the event is held and appended, in order, before the
        next one this process publishes; the failure is logged and returns None, never raised to scoring."""
        async with self._publishing:
            self._unpublished.append(event)
            del self._unpublished[:-MAX_UNPUBLISHED_EVENTS]
            entry_id: str | None = None
            while self._unpublished:
                pending = self._unpublished[0]
                fields: dict[Any, Any] = {k: _field_text(v) for k, v in pending.items() if k != "id"}
                try:
                    reply = await self._redis.xadd(EVENTS_KEY, fields, maxlen=self._maxlen, approximate=True)
                except RedisError:
                    log.exception(
                        "alert event not published yet for stream %s (%d held)",
                        event["stream_id"],
                        len(self._unpublished),
                    )
                    return None
                self._unpublished.pop(0)
                entry_id = text(reply)
            return entry_id

    async def forget(self, stream_id: str) -> None:
        await self._redis.delete(alert_key(stream_id))

    async def state(self, stream_id: str) -> dict[str, str]:
        raw = await self._redis.hgetall(alert_key(stream_id))
        return {text(k): text(v) for k, v in raw.items()}

    async def read_events(self, since: str | None, stream_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Events after id ``since`` (exclusive; see :func:`is_event_id`) in order, optionally for one stream.
        Raises :class:`StoreUnavailable` when Redis is unreachable."""
        start = f"({since}" if since else "-"
        out: list[dict[str, Any]] = []
        while len(out) < limit:
            try:
                batch = await self._redis.xrange(EVENTS_KEY, min=start, max="+", count=max(limit, 100))
            except RedisError as exc:
                raise StoreUnavailable(f"alert events unavailable: {type(exc).__name__}") from exc
            if not batch:
                break
            for entry_id, fields in batch:
                event = decode_event(entry_id, fields or {})
                if stream_id is None or event["stream_id"] == stream_id:
                    out.append(event)
                    if len(out) >= limit:
                        break
            start = f"({text(batch[-1][0] or b'0-0')}"
        return out


def text(value: bytes | str) -> str:
    """Redis replies are bytes (decode_responses is off); the stubs also allow str."""
    return value.decode() if isinstance(value, bytes) else value


def _field_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(value)
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


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
