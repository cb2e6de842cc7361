"""The Redis window store: atomic append, drops, binding, TTL, memory (real redis-server)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis
from redis.asyncio import Redis

from service.errors import BadInput, ModelMismatch, StoreUnavailable
from service.roundtrip import RoundTrip
from service.windows import (
    Append,
    AppendResult,
    Claim,
    StreamGeometry,
    WindowStore,
    meta_key,
    window_key,
)

L, S, C = 10, 3, 4


def run(coro):
    return asyncio.run(coro)


def geometry(model: str = "m") -> StreamGeometry:
    return StreamGeometry(model, L, S, C)


async def _append(
    url: str,
    stream: str,
    ts: list[float],
    model: str = "m",
    ttl_s: int = 60,
    token: str = "t",
    commit: bool = True,
    **store_options: float,
) -> AppendResult:
    """One request's store calls: append (claiming what is due) and, like a request that scored them, commit."""
    client = Redis.from_url(url)
    try:
        store = WindowStore(client, ttl_s, **store_options)  # type: ignore[arg-type]
        values = np.tile(np.minimum(np.asarray(ts), 1e30).astype(np.float32)[:, None], (1, C))
        result = await store.append(stream, geometry(model), np.asarray(ts, dtype=np.float64), values, token)
        if commit and result.windows:
            assert (
                await store.commit(stream, geometry(model), token, result.windows[-1].end_index) is not None
            )
        return result
    finally:
        await client.aclose()


async def _call(url: str, method: str, *args: object) -> object:
    client = Redis.from_url(url)
    try:
        return await getattr(WindowStore(client, 60), method)(*args)
    finally:
        await client.aclose()


def test_windows_are_returned_when_due_with_the_points_they_score(
    redis_url: str, clean_redis: redis.Redis
) -> None:
    first = run(_append(redis_url, "w", [float(t) for t in range(9)]))
    assert first.windows == [] and first.count_after == 9
    second = run(_append(redis_url, "w", [float(t) for t in range(9, 16)]))
    assert [w.end_index for w in second.windows] == [9, 12, 15]
    window = second.windows[1]
    assert window.ts.tolist() == [float(t) for t in range(3, 13)]
    assert window.values[:, 0].tolist() == [float(t) for t in range(3, 13)]  # values travel with their ts
    assert second.windows[0].span == L and window.span == S


def test_windows_a_failed_request_left_unscored_go_to_the_next_request(
    redis_url: str, clean_redis: redis.Redis
) -> None:
    failed = run(_append(redis_url, "f", [float(t) for t in range(13)], token="a", commit=False))
    assert [w.end_index for w in failed.windows] == [9, 12]
    run(_call(redis_url, "release", "f", "a"))  # the request failed after its append
    assert clean_redis.llen(window_key("f")) == 13  # the points its windows need are kept
    retry = run(_append(redis_url, "f", [float(t) for t in range(13)], token="b"))
    assert retry.status == [1] * 13 and retry.count_after == 13
    assert [w.end_index for w in retry.windows] == [9, 12]  # the retry gets the scores
    assert clean_redis.llen(window_key("f")) == L
    again = run(_append(redis_url, "f", [13.0], token="c"))
    assert again.windows == []  # committed: never scored twice


def test_a_held_claim_defers_windows_to_its_holder_which_scores_them_at_commit(
    redis_url: str, clean_redis: redis.Redis
) -> None:
    slow = run(_append(redis_url, "c", [float(t) for t in range(10)], token="slow", commit=False))
    assert [w.end_index for w in slow.windows] == [9]
    other = run(_append(redis_url, "c", [10.0, 11.0, 12.0], token="other"))
    assert other.windows == [] and other.count_after == 13  # stored, not claimed: the slow one holds it
    more = run(_call(redis_url, "commit", "c", geometry(), "slow", 9))
    assert isinstance(more, Claim) and [w.end_index for w in more.windows] == [12]
    assert run(_call(redis_url, "commit", "c", geometry(), "slow", 12)) == Claim([], 15)


def test_a_claim_whose_holder_died_lapses_to_the_next_request(
    redis_url: str, clean_redis: redis.Redis
) -> None:
    run(_append(redis_url, "d", [float(t) for t in range(10)], token="dead", commit=False, claim_s=0.05))
    import time

    time.sleep(0.1)
    taken = run(_append(redis_url, "d", [10.0], token="next", claim_s=0.05))
    assert [w.end_index for w in taken.windows] == [9]
    assert run(_call(redis_url, "commit", "d", geometry(), "dead", 9)) is None  # the dead one lost it


def test_a_backlog_past_its_bound_gives_up_the_oldest_windows(
    redis_url: str, clean_redis: redis.Redis
) -> None:
    first = run(
        _append(redis_url, "b", [float(t) for t in range(15)], token="a", commit=False, max_backlog=10)
    )
    assert first.abandoned_windows == 0 and [w.end_index for w in first.windows] == [9, 12]
    run(_call(redis_url, "release", "b", "a"))
    later = run(_append(redis_url, "b", [float(t) for t in range(15, 40)], token="b", max_backlog=10))
    # 40 unscored points exceed the bound (10 beyond a window of 10): the oldest windows are given up.
    assert later.abandoned_windows == 7  # next_end 9 → 30: 19 unscored points left, within 10 + L
    assert [w.end_index for w in later.windows] == [30, 33, 36, 39]
    assert clean_redis.llen(window_key("b")) == L


def test_a_ts_jumping_too_far_ahead_is_refused_and_nothing_is_written(
    redis_url: str, clean_redis: redis.Redis
) -> None:
    run(_append(redis_url, "j", [1.0, 2.0], max_ts_jump=100.0))
    with pytest.raises(BadInput, match=r"points\.1\.ts: more than 100 after the stream's last ts \(3\)"):
        run(_append(redis_url, "j", [3.0, 1e300], max_ts_jump=100.0))
    assert clean_redis.llen(window_key("j")) == 2 and clean_redis.hget(meta_key("j"), "last_ts") == b"2.0"
    assert run(_append(redis_url, "j", [50.0, 150.0], max_ts_jump=100.0)).count_after == 4


def test_the_stored_window_is_trimmed_to_the_window_length(redis_url: str, clean_redis: redis.Redis) -> None:
    run(_append(redis_url, "trim", [float(t) for t in range(25)]))
    assert clean_redis.llen(window_key("trim")) == L
    assert clean_redis.hget(meta_key("trim"), "count") == b"25"


def test_a_retried_append_adds_nothing(redis_url: str, clean_redis: redis.Redis) -> None:
    run(_append(redis_url, "retry", [1.0, 2.0, 3.0]))
    again = run(_append(redis_url, "retry", [1.0, 2.0, 3.0]))
    assert again.status == [1, 1, 1] and again.count_after == 3
    assert clean_redis.llen(window_key("retry")) == 3


def test_a_stream_stays_bound_to_its_first_model(redis_url: str, clean_redis: redis.Redis) -> None:
    run(_append(redis_url, "bound", [1.0], model="a"))
    with pytest.raises(ModelMismatch, match="bound to model 'a'"):
        run(_append(redis_url, "bound", [2.0], model="b"))
    assert clean_redis.llen(window_key("bound")) == 1


def test_a_model_that_kept_its_name_but_changed_its_sensors_is_a_mismatch_not_a_crash(
    redis_url: str, clean_redis: redis.Redis
) -> None:
    """A restart with another bundle of the same name and other sensors: the stream's stored points cannot go
    into its windows. The append refuses with 409 naming both sensor counts and writes nothing; a stream stored
    before the store kept record sizes (no ``rec`` in its meta) is refused when its mixed window is read."""

    async def append(stream: str, n_features: int, ts: list[float]) -> AppendResult:
        client = Redis.from_url(redis_url)
        try:
            store = WindowStore(client, 60)
            values = np.ones((len(ts), n_features), dtype=np.float32)
            g = StreamGeometry("m", L, S, n_features)
            return await store.append(stream, g, np.asarray(ts, dtype=np.float64), values, "t")
        finally:
            await client.aclose()

    run(append("resized", C, [1.0, 2.0]))
    assert clean_redis.hget(meta_key("resized"), "rec") == str(8 + 4 * C).encode()
    with pytest.raises(ModelMismatch, match=rf"holds points of {C} sensors; model 'm' now has {C + 2}"):
        run(append("resized", C + 2, [3.0]))
    assert (
        clean_redis.llen(window_key("resized")) == 2
        and clean_redis.hget(meta_key("resized"), "count") == b"2"
    )

    run(append("older", C, [float(t) for t in range(L - 1)]))
    clean_redis.hdel(meta_key("older"), "rec")
    with pytest.raises(ModelMismatch, match=rf"model 'm' now has {C + 2}"):
        run(append("older", C + 2, [float(L - 1)]))  # completes a window of both sizes


def test_idle_streams_expire(redis_url: str, clean_redis: redis.Redis) -> None:
    run(_append(redis_url, "idle", [1.0], ttl_s=30))
    for key in (window_key("idle"), meta_key("idle")):
        assert 0 < clean_redis.ttl(key) <= 30


def test_keys_of_a_stream_share_one_cluster_slot() -> None:
    assert window_key("s-1").split("}")[0] == meta_key("s-1").split("}")[0] == "vigil:{s-1"


def test_claim_tokens_are_unique_within_a_process_and_across_a_fork() -> None:
    import os

    from service.rounds import new_token

    ours = {new_token() for _ in range(1000)}
    assert len(ours) == 1000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports the token it draws next, as a forked worker would
        os.write(write, new_token().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    theirs = os.read(read, 100).decode()
    os.close(read)
    assert theirs and theirs not in ours and theirs[:32] != next(iter(ours))[:32]


def _summary(outcome: object) -> object:
    """An append's result (or its error) as comparable plain values."""
    if isinstance(outcome, StoreUnavailable):  # Redis's own WRONGTYPE error, or the script's check for it
        return (type(outcome).__name__,)
    if isinstance(outcome, Exception):
        return type(outcome).__name__, str(outcome).replace("one-", "").replace("each-", "")
    assert isinstance(outcome, AppendResult)
    windows = [(w.end_index, w.span, w.ts.tolist(), w.values.tolist()) for w in outcome.windows]
    return outcome.count_before, outcome.count_after, outcome.status, windows, outcome.claim.next_end


async def _round_of_appends(url: str, prefix: str, one_call: bool) -> tuple[list[object], dict[str, object]]:
    """Streams in seven states (fresh, retried points, bound to another model, a ts jumping too far, a claim held
    by another request, stale points, a key holding another kind of value), then one round appending to all of
    them; the round's results and the Redis state after it."""
    client = Redis.from_url(url)
    try:
        store = WindowStore(client, 60, max_ts_jump=100.0, cluster=not one_call)  # type: ignore[arg-type]
        stream = [f"{prefix}{name}" for name in ("fresh", "retry", "bound", "jump", "held", "stale", "wrong")]

        def points(ts: list[float]) -> tuple[np.ndarray, np.ndarray]:
            return np.asarray(ts, dtype=np.float64), np.tile(
                np.asarray(ts, dtype=np.float32)[:, None], (1, C)
            )

        before = [
            (stream[1], "m", [float(t) for t in range(8)], "t0"),
            (stream[2], "other", [1.0, 2.0], "t0"),
            (stream[3], "m", [1.0, 2.0], "t0"),
            (stream[4], "m", [float(t) for t in range(12)], "holder"),  # claims windows, never commits
            (stream[5], "m", [float(t) for t in range(20, 30)], "t0"),
        ]
        for name, model, ts, token in before:
            await store.append(name, geometry(model), *points(ts), token)
        await client.set(meta_key(stream[6]), "not a hash")
        batch = [
            (stream[0], [float(t) for t in range(12)]),
            (stream[1], [6.0, 7.0, 8.0, 9.0, 10.0]),
            (stream[2], [3.0]),
            (stream[3], [3.0, 500.0]),
            (stream[4], [12.0, 13.0, 14.0]),
            (stream[5], [5.0, 31.0, 32.0]),
            (stream[6], [1.0, 2.0]),
        ]
        appends = [Append(name, geometry(), *points(ts), f"r{i}") for i, (name, ts) in enumerate(batch)]
        trip = RoundTrip(client)  # type: ignore[arg-type]
        decoders = store.queue_appends(trip, appends)
        assert len(trip) == (1 if one_call else len(appends))
        replies = await trip.execute()
        outcomes: list[object] = []
        for decode in decoders:
            try:
                outcomes.append(_summary(decode(replies)))
            except (ModelMismatch, BadInput, StoreUnavailable) as exc:
                outcomes.append(_summary(exc))
        state: dict[str, object] = {}
        for name in stream[:6]:
            meta = {k: v for k, v in (await client.hgetall(meta_key(name))).items() if k != b"claim_until"}
            state[name.removeprefix(prefix)] = (await client.lrange(window_key(name), 0, -1), meta)
        state["wrong"] = (await client.exists(window_key(stream[6])), await client.get(meta_key(stream[6])))
        return outcomes, state
    finally:
        await client.aclose()


def test_a_round_of_appends_in_one_script_call_equals_one_call_per_stream(
    redis_url: str, clean_redis: redis.Redis
) -> None:
    """The batch path's one script call for every stream of a round gives each stream the result, the error
    and the stored state that a call of its own gives (per-item errors stay per item, a key of the wrong type
    included: it fails its stream alone, where an error inside the script would abort it for every stream)."""
    one, one_state = run(_round_of_appends(redis_url, "one-", one_call=True))
    each, each_state = run(_round_of_appends(redis_url, "each-", one_call=False))
    assert one == each and one_state == each_state
    assert [o[0] if isinstance(o[0], str) else "ok" for o in one] == [
        "ok",
        "ok",
        "ModelMismatch",
        "BadInput",
        "ok",
        "ok",
        "StoreUnavailable",
    ]
    assert one[1][2] == [1, 1, 0, 0, 0] and one[5][2] == [2, 0, 0]  # retried and stale points dropped
    assert (
        one[0][3] and not one[4][3]
    )  # the fresh stream's windows claimed; the held stream's left to its holder
