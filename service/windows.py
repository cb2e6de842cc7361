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
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.exceptions import RedisError

from models.scoring import F32
from service.errors import BadInput, ModelMismatch, StoreUnavailable
from service.redis_clients import text
from service.roundtrip import LuaScript, RoundTrip, raise_if_error
from service.window_scripts import APPEND_LUA, APPEND_MANY_LUA, COMMIT_LUA, RELEASE_LUA, RESTART_LUA


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
    return unpack_table(b"".join(records), n_features)


def unpack_table(raw: bytes, n_features: int) -> tuple[npt.NDArray[np.float64], F32]:
    """Records packed back to back: their ts and values."""
    table = np.frombuffer(raw, dtype=record_dtype(n_features))
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


class _StreamArgs(NamedTuple):
    """The append script's arguments that depend on a stream's model, encoded."""

    model: bytes
    window_length: bytes
    stride: bytes
    max_backlog: bytes  # unscored points kept: the store's bound plus a window


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
        self._claim_ms = int(claim_s * 1000)
        self._max_backlog = max_backlog
        self._max_ts_jump = max_ts_jump
        self.redis = redis  # round trips that span stores start from it (service.rounds)
        self._append = LuaScript(APPEND_LUA)
        self._append_many = LuaScript(APPEND_MANY_LUA)
        self._one_call_for_many = not cluster
        # Arguments as bytes: the Redis client passes bytes through, and encodes anything else one by one.
        self._ttl_arg, self._claim_arg = str(ttl_s).encode(), str(self._claim_ms).encode()
        self._jump_arg = repr(max_ts_jump).encode()
        self._commit = LuaScript(COMMIT_LUA)
        self._release = LuaScript(RELEASE_LUA)
        self._restart = LuaScript(RESTART_LUA)
        self._stream_args: dict[StreamGeometry, _StreamArgs] = {}

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
        a = self._args_of(g)
        args: list[bytes | str] = [
            a.model,
            a.window_length,
            a.stride,
            self._ttl_arg,
            token,
            self._claim_arg,
            a.max_backlog,
            self._jump_arg,
        ]
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
        args: list[bytes | str] = [self._ttl_arg, self._claim_arg, self._jump_arg]
        for a in appends:
            keys += (window_key(a.stream_id), meta_key(a.stream_id))
            g = self._args_of(a.geometry)
            args += (g.model, g.window_length, g.stride, a.token, g.max_backlog, str(len(a.ts)).encode())
            _add_points(args, a.ts, a.values)
        index = trip.eval(self._append_many, keys, args)

        def decoder(k: int, a: Append) -> Callable[[list[Any]], AppendResult]:
            return lambda replies: self._decode_append(
                a.stream_id, a.geometry, _store_reply(replies[index])[k]
            )

        return [decoder(k, a) for k, a in enumerate(appends)]

    def _args_of(self, g: StreamGeometry) -> _StreamArgs:
        """A stream geometry's encoded append arguments (made once per geometry)."""
        args = self._stream_args.get(g)
        if args is None:
            args = self._stream_args[g] = _StreamArgs(
                g.model.encode(),
                str(g.window_length).encode(),
                str(g.stride).encode(),
                str(self._max_backlog + g.window_length).encode(),
            )
        return args

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
        if reply[0] == -4:
            raise _sensors_changed(stream_id, g, int(reply[1]))
        count_before, status = int(reply[0]), [int(s) for s in reply[1]]
        claim = _claim(stream_id, g, int(reply[2]), int(reply[3]), list(reply[4]), int(reply[5]))
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
            return _claim(stream_id, g, int(reply[0]), int(reply[1]), list(reply[2]), int(reply[3]))

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

    async def last_ts(self, stream_id: str) -> float | None:
        """The ts of the stream's newest point (None: no window)."""
        try:
            newest = await self._redis.hget(meta_key(stream_id), "last_ts")
        except RedisError as exc:
            raise StoreUnavailable(f"window store unavailable: {type(exc).__name__}") from exc
        return float(newest) if newest is not None else None

    async def restart(self, stream_id: str, model: str) -> bool:
        """Delete the stream's window and meta (its next point starts a new window) unless another model owns
        the stream (:class:`ModelMismatch`); True when there was one."""
        trip = RoundTrip(self._redis)
        trip.eval(self._restart, [window_key(stream_id), meta_key(stream_id)], [model])
        try:
            reply = raise_if_error((await trip.execute())[0])
        except RedisError as exc:
            raise StoreUnavailable(f"window store unavailable: {type(exc).__name__}") from exc
        if int(reply[0]) == -1:
            bound = text(reply[1])
            raise ModelMismatch(f"stream {stream_id!r} is bound to model {bound!r}", bound_model=bound)
        return int(reply[0]) > 0

    async def delete(self, stream_id: str, also: list[str] | None = None) -> bool:
        """Delete the stream's window and meta, and the keys ``also`` (the stream's keys in other stores: one
        hash slot) in the same command, atomically; True when any key was there. A late update of a request
        that scored the stream before finds the meta gone and writes nothing (its fence)."""
        try:
            removed = await self._redis.delete(window_key(stream_id), meta_key(stream_id), *(also or []))
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


def _sensors_changed(stream_id: str, g: StreamGeometry, stored_bytes: int) -> ModelMismatch:
    """The error for a stream whose stored points have another size than its model's now."""
    stored = (stored_bytes - 8) // 4
    return ModelMismatch(
        f"stream {stream_id!r} holds points of {stored} sensors; model {g.model!r} now has {g.n_features} "
        f"(a bundle of that name with other sensors): delete the stream (DELETE /streams/{stream_id}) or "
        "serve the new bundle under another name",
        bound_model=g.model,
    )


def _claim(
    stream_id: str, g: StreamGeometry, first: int, last_end: int, records: list[bytes], next_end: int
) -> Claim:
    """The claimed windows ``first, first + stride, …, last_end`` from the records covering them."""
    if first < 0:
        return Claim([], next_end)
    raw = b"".join(records)
    size = record_dtype(g.n_features).itemsize
    if len(raw) != size * len(records):  # a record of another size: stored before the append checked sizes
        raise _sensors_changed(stream_id, g, next(len(r) for r in records if len(r) != size))
    ts, values = unpack_table(raw, g.n_features)
    base = first - g.window_length + 1  # stream index of records[0]
    windows = []
    for end in range(first, last_end + 1, g.stride):
        lo, hi = end - g.window_length + 1 - base, end + 1 - base
        span = g.window_length if end == g.window_length - 1 else g.stride
        windows.append(DueWindow(end, values[lo:hi], ts[lo:hi], span))
    return Claim(windows, next_end)
