"""Several stores' Redis calls sent together: one pipelined round trip, each reply decoded by its own store.

The stores queue their Lua calls and commands (``RoundTrip.eval``, ``RoundTrip.call``) and get back the index of
each reply. Scripts travel by sha (EVALSHA): redis-py's own script objects check ``SCRIPT EXISTS`` before every
pipeline, an extra round trip each time; here a script is loaded only when Redis answers NOSCRIPT (after a
restart or a ``SCRIPT FLUSH``), and those calls are sent again, with every later call of the trip on one of
their keys: that call ran before them and saw state they had not yet changed (an alert update that missed its
script, then the commit that checks it: the commit is sent again too, or the scored windows would be scored a
second time). Replies that are errors come back as exception objects in place, so one stream's failure does not
fail the others; a connection failure raises.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError


@dataclass(frozen=True)
class LuaScript:
    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode()).hexdigest())


@dataclass(frozen=True)
class _Call:
    script: LuaScript | None
    args: tuple[Any, ...]
    keys: frozenset[str] = frozenset()  # a script's keys (plain calls declare none)


class RoundTrip:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._calls: list[_Call] = []

    def __len__(self) -> int:
        return len(self._calls)

    def eval(self, script: LuaScript, keys: list[str], args: list[Any]) -> int:
        """Queue ``script`` on ``keys`` with ``args``; returns the index of its reply."""
        self._calls.append(_Call(script, (script.sha, len(keys), *keys, *args), frozenset(keys)))
        return len(self._calls) - 1

    def call(self, *args: Any) -> int:
        """Queue a plain command (``"LRANGE", key, 0, -1``); returns the index of its reply."""
        self._calls.append(_Call(None, args))
        return len(self._calls) - 1

    async def execute(self) -> list[Any]:
        """Send every queued call in one pipeline; replies in order (an error reply as its exception).
        Raises :class:`redis.exceptions.RedisError` when Redis cannot be reached."""
        if not self._calls:
            return []
        replies = await self._send(self._calls)
        missing = [i for i, r in enumerate(replies) if _is_noscript(r)]
        if missing:
            scripts = {call.script for call in (self._calls[i] for i in missing) if call.script is not None}
            for script in scripts:
                await self._redis.script_load(script.text)
            again = _with_later_calls_on_their_keys(self._calls, missing)
            for i, reply in zip(again, await self._send([self._calls[i] for i in again]), strict=True):
                replies[i] = reply
        return replies

    async def _send(self, calls: list[_Call]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for call in calls:
            if call.script is None:
                pipe.execute_command(*call.args)
            else:
                pipe.execute_command("EVALSHA", *call.args)
        return list(await pipe.execute(raise_on_error=False))


def _with_later_calls_on_their_keys(calls: list[_Call], failed: list[int]) -> list[int]:
    """The ``failed`` calls and, in order, every later call sharing a key with one sent again before it."""
    resend: list[int] = []
    touched: set[str] = set()
    failing = set(failed)
    for i in range(failed[0], len(calls)):
        if i in failing or calls[i].keys & touched:
            resend.append(i)
            touched |= calls[i].keys
    return resend


def _is_noscript(reply: Any) -> bool:
    return isinstance(reply, NoScriptError) or (isinstance(reply, ResponseError) and "NOSCRIPT" in str(reply))


def raise_if_error(reply: Any) -> Any:
    """A reply, or the exception an error reply carries raised."""
    if isinstance(reply, Exception):
        raise reply
    return reply
