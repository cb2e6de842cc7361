"""Hot reloads that reach every process: a reload answered by one API process (one of ``--workers N``, one
replica behind a load balancer) bumps a generation counter in Redis, and every process, the shared inference
process included, reloads when it sees the counter move. Without it a reload reached only the process that
answered it: with two workers some requests still got the old version, and in shared mode the inference
process never reloaded at all (tests/service/test_models_admin.py, tests/reliability/test_shared_inference.py).
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.errors import VigilError
from service.registry import ModelRegistry

log = logging.getLogger(__name__)

GENERATION_KEY = "vigil:models:generation"


async def announce(redis: Redis) -> None:
    """Tell every process a reload happened (best effort: a failure is logged; this process has reloaded)."""
    try:
        await redis.incr(GENERATION_KEY)
    except RedisError:
        log.exception("model reload not announced to the other processes (Redis unavailable)")


async def current(redis: Redis) -> int:
    value = await redis.get(GENERATION_KEY)
    return int(value) if value is not None else 0


async def follow(redis: Redis, models: ModelRegistry, interval_s: float = 1.0) -> None:
    """Reload every model whenever the generation moves past the one seen last (checked every
    ``interval_s``); runs until cancelled. A version that cannot be served (other sensors) is logged and the
    current one kept, as the reload route answers 409 for it."""
    seen: int | None = None
    while True:
        try:
            generation = await current(redis)
            if seen is not None and generation != seen:
                changes = await models.reload()
                changed = [c for c in changes if c["changed"]]
                if changed:
                    log.info("models reloaded after a reload elsewhere: %s", changed)
            seen = generation
        except (RedisError, OSError):
            pass  # Redis down: try again at the next turn
        except VigilError as exc:
            log.error("model reload announced elsewhere refused here: %s", exc.detail)
            seen = generation
        await asyncio.sleep(interval_s)
