"""A lease in Redis: one holder at a time among replicas, taken when free, kept by renewing it.

``hold()`` takes the lease when nobody holds it, or extends it when this owner does (one Lua call); a holder
that stops renewing loses it after ``ttl_s``, and ``release()`` hands it over at once. Used where exactly one
replica must act (alert delivery, service/notify.py; source polling, service/poller.py). ``held()`` only looks:
a holder checks it right before a step another holder must not take twice (a fence against its own pause past
``ttl_s``: the check and the step are not atomic, so it narrows that window to the time between them).
"""

from __future__ import annotations

from redis.asyncio import Redis

# KEYS: the lease. ARGV: owner, ttl ms. Takes a free lease or extends one the owner holds.
HOLD_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
# KEYS: the lease, a key in its slot. ARGV: owner, ttl ms, value. Writes the key only while the owner holds the
# lease (and extends it): progress a holder that lost the lease must not record.
WRITE_IF_HELD_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  redis.call('SET', KEYS[2], ARGV[3])
  return 1
end
return 0
"""
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Lease:
    """Raises ``RedisError`` (or ``OSError``) from both methods when Redis fails: the caller decides."""

    def __init__(self, redis: Redis, key: str, owner: str, ttl_s: float) -> None:
        self.key = key
        self.owner = owner
        self._ttl_ms = max(1, int(ttl_s * 1000))
        self._redis = redis
        self._hold = redis.register_script(HOLD_LUA)
        self._release = redis.register_script(RELEASE_LUA)
        self._write = redis.register_script(WRITE_IF_HELD_LUA)

    async def hold(self) -> bool:
        """True when this owner holds the lease for the next ``ttl_s``."""
        return bool(await self._hold(keys=[self.key], args=[self.owner, self._ttl_ms]))

    async def held(self) -> bool:
        """True when this owner holds the lease now (nothing renewed)."""
        holder = await self._redis.get(self.key)
        return holder is not None and (holder.decode() if isinstance(holder, bytes) else holder) == self.owner

    async def write_if_held(self, key: str, value: str) -> bool:
        """Set ``key`` (in the lease's slot) to ``value`` and extend the lease, only while this owner holds it."""
        return bool(await self._write(keys=[self.key, key], args=[self.owner, self._ttl_ms, value]))

    async def release(self) -> None:
        """Give the lease up if this owner holds it."""
        await self._release(keys=[self.key], args=[self.owner])
