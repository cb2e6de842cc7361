"""Per-stream sliding windows in Redis: packed float32 records, one atomic Lua call per append.

Keys are hash-tagged by stream (``vigil:{<stream_id>}:w`` list of records, ``:m`` hash of model binding,
last ts and point count) so one stream's keys share a Redis Cluster slot. A record is the point's ts as a
little-endian float64 followed by its C values as little-endian float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.exceptions import RedisError

from models.scoring import F32, window_ends
from service.errors import ModelMismatch, StoreUnavailable

# KEYS: window list, meta hash. ARGV: model, L, stride, ttl_s, then per point: ts, record.
# Returns {count_before, status per point (0 accepted, 1 duplicate, 2 stale), held records if a window is due}.
APPEND_LUA = """
local model, L, stride, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local meta = redis.call('HMGET', KEYS[2], 'model', 'last_ts', 'count')
if meta[1] and meta[1] ~= model then return {-1, meta[1]} end
local last = meta[2] and tonumber(meta[2]) or nil
local last_text = meta[2]
local count = tonumber(meta[3] or '0')
local held = nil
local status, pushed = {}, 0
for i = 5, #ARGV, 2 do
  local t = tonumber(ARGV[i])
  if last == nil or t > last then
    redis.call('RPUSH', KEYS[1], ARGV[i + 1])
    last, last_text, pushed = t, ARGV[i], pushed + 1
    status[#status + 1] = 0
  else
    if held == nil then held = redis.call('LRANGE', KEYS[1], 0, -1) end
    local reason = 2
    for _, r in ipairs(held) do
      if struct.unpack('<d', r) == t then reason = 1 break end
    end
    status[#status + 1] = reason
  end
end
local due = false
if pushed > 0 then
  local first_end = L - 1
  local hi = count + pushed - 1
  local lo = math.max(count, first_end)
  if hi >= lo then
    local e = lo + ((stride - ((lo - first_end) % stride)) % stride)
    due = e <= hi
  end
end
local window = {}
if due then window = redis.call('LRANGE', KEYS[1], 0, -(pushed + 1)) end
if pushed > 0 then
  redis.call('LTRIM', KEYS[1], -L, -1)
  redis.call('HSET', KEYS[2], 'model', model, 'last_ts', last_text, 'count', count + pushed)
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return {count, status, window}
"""


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def window_key(stream_id: str) -> str:
    return f"vigil:{{{stream_id}}}:w"


def meta_key(stream_id: str) -> str:
    return f"vigil:{{{stream_id}}}:m"


def record_dtype(n_features: int) -> np.dtype[np.void]:
    return np.dtype([("ts", "<f8"), ("values", "<f4", (n_features,))])


def pack_records(ts: npt.NDArray[np.float64], values: F32) -> list[bytes]:
    """One packed record per point: ts float64 + values float32, little-endian."""
    dtype = record_dtype(values.shape[1])
    table = np.empty(len(ts), dtype=dtype)
    table["ts"] = ts
    table["values"] = values
    raw = table.tobytes()
    size = dtype.itemsize
    return [raw[i * size : (i + 1) * size] for i in range(len(ts))]


def unpack_records(records: list[bytes], n_features: int) -> tuple[npt.NDArray[np.float64], F32]:
    table = np.frombuffer(b"".join(records), dtype=record_dtype(n_features))
    return table["ts"].astype(np.float64), np.ascontiguousarray(table["values"], dtype=np.float32)


@dataclass(frozen=True)
class DueWindow:
    """A window now due: raw values ``[L, C]``, the ts of its points, and how many newest points it scores."""

    end_index: int
    values: F32
    ts: npt.NDArray[np.float64]
    span: int


@dataclass(frozen=True)
class AppendResult:
    count_before: int
    count_after: int
    status: list[int]  # per point: 0 accepted, 1 duplicate, 2 stale
    windows: list[DueWindow]


class WindowStore:
    """Appends points to a stream's window and returns the windows that are now due (parity rule)."""

    def __init__(self, redis: Redis, ttl_s: int) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._script = redis.register_script(APPEND_LUA)

    async def append(
        self,
        stream_id: str,
        model: str,
        window_length: int,
        stride: int,
        ts: npt.NDArray[np.float64],
        values: F32,
    ) -> AppendResult:
        """Append points (ts strictly increasing) atomically; duplicates and stale ts are dropped."""
        records = pack_records(ts, values)
        args: list[bytes | str | int] = [model, window_length, stride, self._ttl_s]
        for t, record in zip(ts.tolist(), records, strict=True):
            args.append(repr(float(t)))
            args.append(record)
        try:
            reply = await self._script(keys=[window_key(stream_id), meta_key(stream_id)], args=args)
        except RedisError as exc:
            raise StoreUnavailable(f"window store unavailable: {type(exc).__name__}") from exc
        if reply[0] == -1:
            bound = reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1])
            raise ModelMismatch(f"stream {stream_id!r} is bound to model {bound!r}", bound_model=bound)
        count_before, status, held = int(reply[0]), [int(s) for s in reply[1]], list(reply[2])
        accepted = np.asarray([s == 0 for s in status])
        count_after = count_before + int(accepted.sum())
        windows = self._due_windows(held, ts[accepted], values[accepted], count_before, window_length, stride)
        return AppendResult(count_before, count_after, status, windows)

    @staticmethod
    def _due_windows(
        held: list[bytes],
        new_ts: npt.NDArray[np.float64],
        new_values: F32,
        count_before: int,
        window_length: int,
        stride: int,
    ) -> list[DueWindow]:
        count_after = count_before + len(new_ts)
        ends = window_ends(count_after, window_length, stride, first_index=count_before)
        if not ends:
            return []
        n_features = new_values.shape[1]
        held_ts, held_values = (
            unpack_records(held, n_features)
            if held
            else (
                np.empty(0, np.float64),
                np.empty((0, n_features), np.float32),
            )
        )
        all_ts = np.concatenate([held_ts, new_ts])
        all_values = np.concatenate([held_values, new_values])
        base = count_before - len(held_ts)  # stream index of all_values[0]
        windows = []
        for end in ends:
            lo, hi = end - window_length + 1 - base, end + 1 - base
            span = window_length if end == window_length - 1 else stride
            windows.append(DueWindow(end, all_values[lo:hi], all_ts[lo:hi], span))
        return windows

    async def describe(self, stream_id: str) -> dict[str, str] | None:
        try:
            meta = await self._redis.hgetall(meta_key(stream_id))
            held = await self._redis.llen(window_key(stream_id))
        except RedisError as exc:
            raise StoreUnavailable(f"window store unavailable: {type(exc).__name__}") from exc
        if not meta:
            return None
        info = {text(k): text(v) for k, v in meta.items()}
        info["held"] = str(held)
        return info

    async def delete(self, stream_id: str) -> bool:
        try:
            removed = await self._redis.delete(window_key(stream_id), meta_key(stream_id))
        except RedisError as exc:
            raise StoreUnavailable(f"window store unavailable: {type(exc).__name__}") from exc
        return int(removed) > 0
