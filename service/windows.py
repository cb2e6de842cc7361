"""Per-stream sliding windows in Redis: packed float32 records, one atomic Lua call per append.

Keys are hash-tagged by stream (``vigil:{<stream_id>}:w`` list of records, ``:m`` hash of model binding, last
ts, point count and the scoring frontier) so one stream's keys share a Redis Cluster slot. A record is the
point's ts as a little-endian float64 followed by its C values as little-endian float32.

Scoring is as durable as storage. The meta hash keeps ``next_end``, the end index of the first window not yet
scored (and alert-tracked); the list keeps every point that window still needs. An append claims the windows
now due (all of them from ``next_end``, including any that a failed request left behind) for the request,
with a deadline; the request scores them, updates alerts, then commits (``next_end`` moves past them) or, on
failure, releases the claim. A claim whose holder died lapses at its deadline. While another request holds a
valid claim, an append stores its points and claims nothing: the holder's commit picks up what became due
meanwhile, so nothing waits for a later request. Admission control refuses before appending where it can.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.exceptions import RedisError

from models.scoring import F32
from service.errors import BadInput, ModelMismatch, StoreUnavailable
from service.roundtrip import LuaScript, RoundTrip, raise_if_error

# Shared Lua: the first window end at or after index f, the claim of the due windows, and the trim.
_LUA_HELPERS = """
local function first_end_from(f, L, stride)
  if f <= L - 1 then return L - 1 end
  return L - 1 + math.ceil((f - (L - 1)) / stride) * stride
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Claims the windows due from next_end (if any) for token; returns first, last end and their records.
local function claim_due(list, meta, token, claim_ms, next_end, count, L, stride)
  if next_end > count - 1 then return -1, -1, {} end
  local last_end = next_end + math.floor((count - 1 - next_end) / stride) * stride
  redis.call('HSET', meta, 'claim', token, 'claim_until', now_ms() + claim_ms)
  local base = count - redis.call('LLEN', list)
  return next_end, last_end, redis.call('LRANGE', list, next_end - L + 1 - base, last_end - base)
end
-- Keeps the points the first unscored window needs, or the last L.
local function trim(list, next_end, count, L)
  local keep_from = math.min(next_end - L + 1, count - L)
  if keep_from > 0 then redis.call('LTRIM', list, keep_from - count, -1) end
end
"""

# One stream's append: its points are ARGV[first], ARGV[first + 1], ... ARGV[last] as (ts, record) pairs. Returns
# {count_before, status per point (0 accepted, 1 duplicate, 2 stale), first and last claimed window end (-1:
# none), their records, next_end, windows abandoned}, or {-1, bound model}, or {-2, index of the point, previous
# ts} when a point jumps further ahead than max_jump (nothing is written).
_LUA_APPEND_STREAM = """
local function append_stream(wkey, mkey, model, L, stride, ttl, token, claim_ms, max_backlog, max_jump, first, last)
  local meta = redis.call('HMGET', mkey, 'model', 'last_ts', 'count', 'next_end', 'claim', 'claim_until')
  if meta[1] and meta[1] ~= model then return {-1, meta[1]} end
  local last_ts = meta[2] and tonumber(meta[2]) or nil
  local last_text = meta[2]
  local count = tonumber(meta[3] or '0')
  local status, held = {}, nil
  for i = first, last, 2 do
    local t = tonumber(ARGV[i])
    if last_ts == nil or t > last_ts then
      if last_ts ~= nil and max_jump > 0 and t - last_ts > max_jump then
        return {-2, (i - first) / 2, string.format('%.17g', last_ts)}
      end
      last_ts = t
      status[#status + 1] = 0
    else
      if held == nil then  -- the ts still in the list, once: a retry of many points stays linear
        held = {}
        for _, r in ipairs(redis.call('LRANGE', wkey, 0, -1)) do held[struct.unpack('<d', r)] = true end
      end
      if held[t] then status[#status + 1] = 1 else status[#status + 1] = 2 end
    end
  end
  local pushed = 0
  for i = first, last, 2 do
    if status[(i - first) / 2 + 1] == 0 then
      redis.call('RPUSH', wkey, ARGV[i + 1])
      last_text, pushed = ARGV[i], pushed + 1
    end
  end
  local count_after = count + pushed
  local next_end = tonumber(meta[4] or '-1')
  if next_end < 0 then next_end = first_end_from(count, L, stride) end  -- kept since before the frontier
  local abandoned = 0
  local backlog = count_after - (next_end - L + 1)
  if backlog > max_backlog and next_end <= count_after - 1 then
    abandoned = math.min(math.ceil((backlog - max_backlog) / stride),
                         math.floor((count_after - 1 - next_end) / stride) + 1)
    next_end = next_end + abandoned * stride
  end
  local first_end, last_end, window = -1, -1, {}
  local claim, until_ms = meta[5], tonumber(meta[6] or '0')
  if not claim or claim == token or until_ms <= now_ms() then
    first_end, last_end, window = claim_due(wkey, mkey, token, claim_ms, next_end, count_after, L, stride)
  end
  if pushed > 0 or abandoned > 0 or meta[4] == false then
    trim(wkey, next_end, count_after, L)
    redis.call('HSET', mkey, 'model', model, 'count', count_after, 'next_end', next_end)
    if last_text then redis.call('HSET', mkey, 'last_ts', last_text) end
  end
  redis.call('EXPIRE', wkey, ttl)
  redis.call('EXPIRE', mkey, ttl)
  return {count, status, first_end, last_end, window, next_end, abandoned}
end
"""

# KEYS: window list, meta hash. ARGV: model, L, stride, ttl_s, token, claim_ms, max_backlog, max_jump, then per
# point: ts, record. Returns one stream's reply (above).
APPEND_LUA = (
    _LUA_HELPERS
    + _LUA_APPEND_STREAM
    + """
return append_stream(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5],
                     tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), 9, #ARGV)
"""
)

# Many streams' appends in one call (a round of a batch request on one Redis; not on a Redis Cluster, whose
# streams live in different slots). KEYS: window list and meta hash of each stream. ARGV: ttl_s, claim_ms,
# max_jump, then per stream: model, L, stride, token, max_backlog, point count, then its points as ts, record.
# Returns each stream's reply, in order: the same as an APPEND_LUA call per stream in that order, or {-3} for a
# stream whose keys hold another kind of value (where its own call would fail with WRONGTYPE), nothing written.
APPEND_MANY_LUA = (
    _LUA_HELPERS
    + _LUA_APPEND_STREAM
    + """
local ttl, claim_ms, max_jump = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function holds(key, kind)
  local t = redis.call('TYPE', key)['ok']
  return t == 'none' or t == kind
end
local out, i = {}, 4
for s = 1, #KEYS, 2 do
  local first = i + 6
  local last = first + 2 * tonumber(ARGV[i + 5]) - 1
  if holds(KEYS[s], 'list') and holds(KEYS[s + 1], 'hash') then
    out[#out + 1] = append_stream(KEYS[s], KEYS[s + 1], ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]),
                                  ttl, ARGV[i + 3], claim_ms, tonumber(ARGV[i + 4]), max_jump, first, last)
  else  -- a key holding another kind of value would abort the script halfway: this stream fails alone
    out[#out + 1] = {-3}
  end
  i = last + 1
end
return out
"""
)

# KEYS: window list, meta hash[, alert hash]. ARGV: token, last scored end, L, stride, claim_ms[, last scored ts].
# Moves next_end past the scored windows and claims what became due meanwhile; {-1} when the claim went to
# another request; {-2} when the alert hash is given and has not seen the last scored point (its update failed).
COMMIT_LUA = (
    _LUA_HELPERS
    + """
local meta = redis.call('HMGET', KEYS[2], 'count', 'next_end', 'claim')
if meta[3] ~= ARGV[1] then return {-1} end
if KEYS[3] then
  local seen = redis.call('HGET', KEYS[3], 'last_ts')
  if not seen or tonumber(seen) < tonumber(ARGV[6]) then return {-2} end
end
local L, stride, claim_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local count = tonumber(meta[1])
local next_end = math.max(tonumber(meta[2]), tonumber(ARGV[2]) + stride)
redis.call('HSET', KEYS[2], 'next_end', next_end)
local first, last_end, window = claim_due(KEYS[1], KEYS[2], ARGV[1], claim_ms, next_end, count, L, stride)
if first < 0 then redis.call('HDEL', KEYS[2], 'claim', 'claim_until') end
trim(KEYS[1], next_end, count, L)
return {first, last_end, window, next_end}
"""
)

# KEYS: meta hash. ARGV: token. Gives up the claim (a failed request), so the next request scores its windows.
RELEASE_LUA = """
if redis.call('HGET', KEYS[1], 'claim') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'claim', 'claim_until')
  return 1
end
return 0
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
class Claim:
    """Windows claimed for one request (scored by it, then committed or released) and the frontier after."""

    windows: list[DueWindow]
    next_end: int  # end index of the first window not yet scored

    def scored_points(self, window_length: int, stride: int) -> int:
        """Points of the stream already scored (or being scored under this claim)."""
        end = self.windows[-1].end_index + stride if self.windows else self.next_end
        return 0 if end <= window_length - 1 else end - stride + 1


@dataclass(frozen=True)
class AppendResult:
    count_before: int
    count_after: int
    status: list[int]  # per point: 0 accepted, 1 duplicate, 2 stale
    claim: Claim
    abandoned_windows: int  # unscored windows given up because the backlog passed its bound

    @property
    def windows(self) -> list[DueWindow]:
        return self.claim.windows


@dataclass(frozen=True)
class StreamGeometry:
    """What the store needs of a stream's model."""

    model: str
    window_length: int
    stride: int
    n_features: int


@dataclass(frozen=True)
class Append:
    """One stream's points to append, for :meth:`WindowStore.queue_appends`."""

    stream_id: str
    geometry: StreamGeometry
    ts: npt.NDArray[np.float64]
    values: F32
    token: str


class WindowStore:
    """Appends points to a stream's window and claims the windows that are now due (parity rule)."""

    def __init__(
        self,
        redis: Redis,
        ttl_s: int,
        claim_s: float = 10.0,
        max_backlog: int = 10_000,
        max_ts_jump: float = 0.0,
        cluster: bool = False,
    ) -> None:
        """``max_backlog``: unscored points kept beyond a window (then the oldest windows are given up);
        ``max_ts_jump``: how far a point may be ahead of its stream's last ts (0: no bound); ``cluster``: the
        client is a Redis Cluster's (one script call per stream: streams live in different slots)."""
        self._redis = redis
        self._ttl_s = ttl_s
        self._claim_ms = int(claim_s * 1000)
        self._max_backlog = max_backlog
        self._max_ts_jump = max_ts_jump
        self.redis = redis  # round trips that span stores start from it (service.rounds)
        self._append = LuaScript(APPEND_LUA)
        self._append_many = LuaScript(APPEND_MANY_LUA)
        self._one_call_for_many = not cluster
        self._many_head = [
            str(self._ttl_s).encode(),
            str(self._claim_ms).encode(),
            repr(max_ts_jump).encode(),
        ]
        self._commit = LuaScript(COMMIT_LUA)
        self._release = LuaScript(RELEASE_LUA)
        self._heads: dict[StreamGeometry, list[bytes]] = {}  # encoded constant arguments of an append

    def queue_append(
        self,
        trip: RoundTrip,
        stream_id: str,
        geometry: StreamGeometry,
        ts: npt.NDArray[np.float64],
        values: F32,
        token: str,
    ) -> Callable[[list[Any]], AppendResult]:
        """Queue an append (see :meth:`append`) on ``trip``; the returned function decodes its reply."""
        g = geometry
        # Arguments as bytes: the Redis client passes bytes through, and encodes anything else one by one.
        head = self._head(g)
        args: list[bytes | str] = [*head[:4], token, *head[4:]]
        _add_points(args, ts, values)
        index = trip.eval(self._append, [window_key(stream_id), meta_key(stream_id)], args)
        return lambda replies: self._decode_append(stream_id, g, _store_reply(replies[index]))

    def queue_appends(
        self, trip: RoundTrip, appends: list[Append]
    ) -> list[Callable[[list[Any]], AppendResult]]:
        """Queue many streams' appends on ``trip``: one script call for all of them where the store may (one
        Redis, not a cluster), else one each. Returns each append's decoder, in order: the same results as
        :meth:`queue_append` for each in that order (distinct streams)."""
        if not self._one_call_for_many or len(appends) < 2:
            return [
                self.queue_append(trip, a.stream_id, a.geometry, a.ts, a.values, a.token) for a in appends
            ]
        keys: list[str] = []
        args: list[bytes | str] = [*self._many_head]
        for a in appends:
            keys += (window_key(a.stream_id), meta_key(a.stream_id))
            head = self._head(a.geometry)
            args += (*head[:3], a.token, head[5], str(len(a.ts)).encode())
            _add_points(args, a.ts, a.values)
        index = trip.eval(self._append_many, keys, args)

        def decoder(k: int, a: Append) -> Callable[[list[Any]], AppendResult]:
            return lambda replies: self._decode_append(
                a.stream_id, a.geometry, _store_reply(replies[index])[k]
            )

        return [decoder(k, a) for k, a in enumerate(appends)]

    def _head(self, g: StreamGeometry) -> list[bytes]:
        """The encoded constant arguments of a stream's append: model, L, stride, ttl, claim_ms, max_backlog,
        max_jump."""
        head = self._heads.get(g)
        if head is None:
            head = self._heads[g] = [
                str(x).encode()
                for x in (
                    g.model,
                    g.window_length,
                    g.stride,
                    self._ttl_s,
                    self._claim_ms,
                    self._max_backlog + g.window_length,
                    repr(self._max_ts_jump),
                )
            ]
        return head

    def _decode_append(self, stream_id: str, g: StreamGeometry, reply: Any) -> AppendResult:
        if reply[0] == -3:
            raise StoreUnavailable(
                f"window store unavailable: a key of stream {stream_id!r} holds the wrong type"
            )
        if reply[0] == -1:
            bound = text(reply[1])
            raise ModelMismatch(f"stream {stream_id!r} is bound to model {bound!r}", bound_model=bound)
        if reply[0] == -2:
            raise BadInput(
                f"points.{int(reply[1])}.ts: more than {self._max_ts_jump:g} after the stream's last ts "
                f"({text(reply[2])}); the bound is VIGIL_MAX_TS_JUMP"
            )
        count_before, status = int(reply[0]), [int(s) for s in reply[1]]
        claim = _claim(g, int(reply[2]), int(reply[3]), list(reply[4]), int(reply[5]))
        return AppendResult(count_before, count_before + status.count(0), status, claim, int(reply[6]))

    async def append(
        self,
        stream_id: str,
        geometry: StreamGeometry,
        ts: npt.NDArray[np.float64],
        values: F32,
        token: str,
    ) -> AppendResult:
        """Append points (ts strictly increasing) atomically; duplicates and stale ts are dropped. Claims every
        window now due for ``token`` (commit or release it). Raises :class:`ModelMismatch`, :class:`BadInput`
        (a ts jumping too far ahead: nothing is written) or :class:`StoreUnavailable`."""
        trip = RoundTrip(self._redis)
        decode = self.queue_append(trip, stream_id, geometry, ts, values, token)
        return decode(await _execute(trip))

    def queue_commit(
        self,
        trip: RoundTrip,
        stream_id: str,
        geometry: StreamGeometry,
        token: str,
        last_end: int,
        seen: tuple[str, str] | None = None,
    ) -> Callable[[list[Any]], Claim | None]:
        """Queue a commit (see :meth:`commit`). With ``seen = (alert hash key, ts text)`` the commit happens only
        if that alert state has seen a point at or after ts (queued after the alert update in one round trip:
        a failed update leaves the windows unscored); otherwise it decodes to :data:`ALERTS_PENDING`."""
        g = geometry
        keys = [window_key(stream_id), meta_key(stream_id)]
        args: list[str | int] = [token, last_end, g.window_length, g.stride, self._claim_ms]
        if seen is not None:
            keys.append(seen[0])
            args.append(seen[1])
        index = trip.eval(self._commit, keys, args)

        def decode(replies: list[Any]) -> Claim | None:
            reply = _store_reply(replies[index])
            if reply[0] == -1 and len(reply) == 1:
                return None
            if reply[0] == -2 and len(reply) == 1:
                return ALERTS_PENDING
            return _claim(g, int(reply[0]), int(reply[1]), list(reply[2]), int(reply[3]))

        return decode

    async def commit(
        self, stream_id: str, geometry: StreamGeometry, token: str, last_end: int
    ) -> Claim | None:
        """Mark the claimed windows up to ``last_end`` scored; returns the windows that became due meanwhile
        (claimed for ``token`` in turn), or None when the claim lapsed to another request."""
        trip = RoundTrip(self._redis)
        decode = self.queue_commit(trip, stream_id, geometry, token, last_end)
        return decode(await _execute(trip))

    async def release(self, stream_id: str, token: str) -> bool:
        """Give the claim up after a failure, so the next request scores its windows. Best effort: False when
        Redis could not be reached (the claim lapses at its deadline, or a later ``release`` frees it)."""
        trip = RoundTrip(self._redis)
        trip.eval(self._release, [meta_key(stream_id)], [token])
        try:
            raise_if_error((await trip.execute())[0])
        except RedisError:
            return False
        return True

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


# A commit refused because the alert state has not seen the scored points (its update failed).
ALERTS_PENDING = Claim([], -1)


async def _execute(trip: RoundTrip) -> list[Any]:
    try:
        return await trip.execute()
    except RedisError as exc:
        raise StoreUnavailable(f"window store unavailable: {type(exc).__name__}") from exc


def _add_points(args: list[bytes | str], ts: npt.NDArray[np.float64], values: F32) -> None:
    """Each point's ts text and packed record, in order."""
    for t, record in zip(ts.tolist(), pack_records(ts, values), strict=True):
        args.append(repr(float(t)).encode())
        args.append(record)


def _store_reply(reply: Any) -> Any:
    if isinstance(reply, RedisError):
        raise StoreUnavailable(f"window store unavailable: {type(reply).__name__}") from reply
    return reply


def _claim(g: StreamGeometry, first: int, last_end: int, records: list[bytes], next_end: int) -> Claim:
    """The claimed windows ``first, first + stride, …, last_end`` from the records covering them."""
    if first < 0:
        return Claim([], next_end)
    ts, values = unpack_records(records, g.n_features)
    base = first - g.window_length + 1  # stream index of records[0]
    windows = []
    for end in range(first, last_end + 1, g.stride):
        lo, hi = end - g.window_length + 1 - base, end + 1 - base
        span = g.window_length if end == g.window_length - 1 else g.stride
        windows.append(DueWindow(end, values[lo:hi], ts[lo:hi], span))
    return Claim(windows, next_end)
