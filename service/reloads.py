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

from models.manifest import MANIFEST_FILE, find_bundles
from service.errors import VigilError
from service.redis_clients import text
from service.registry import ModelRegistry

log = logging.getLogger(__name__)

GENERATION_KEY = "vigil:models:generation"
ANNOUNCED_KEY = "vigil:models:announced"  # hash: model name -> the version the last reload of it served


class AnnouncedVersionMissing(Exception):
    """A reload elsewhere served a version this process's models folder does not hold yet (a replica whose copy
    of the folder is still syncing): the follower tries again, as for a bundle still being copied."""


async def announce(redis: Redis, served: dict[str, str] | None = None) -> None:
    """Tell every process a reload happened, with the version each reloaded model now serves (best effort: a
    failure is logged; this process has reloaded)."""
    try:
        for name, version in (served or {}).items():  # before the generation that makes followers look
            await redis.hset(ANNOUNCED_KEY, name, version)  # (two slots on a Redis Cluster: no transaction)
        await redis.incr(GENERATION_KEY)
    except RedisError:
        log.exception("model reload not announced to the other processes (Redis unavailable)")


async def current(redis: Redis) -> int:
    value = await redis.get(GENERATION_KEY)
    return int(value) if value is not None else 0


async def generation_before_load(redis: Redis) -> int | None:
    """The generation to hand :func:`follow`, read before this process loads its models, so a reload announced
    while it loads is not missed (None when Redis cannot say: the follower's first read then stands)."""
    try:
        return await current(redis)
    except (RedisError, OSError):
        return None


async def _reload_each(models: ModelRegistry) -> None:
    """Reload every model on disk, one at a time: a version refused here (other sensors, as the reload route
    answers 409 for it) is logged and its model keeps serving, without holding back the others."""
    for name in find_bundles(models.models_dir):
        try:
            changes = await models.reload(name)
        except VigilError as exc:
            log.error("model reload announced elsewhere refused here for %s: %s", name, exc.detail)
            continue
        changed = [c for c in changes if c["changed"]]
        if changed:
            log.info("models reloaded after a reload elsewhere: %s", changed)


async def _check_announced(redis: Redis, models: ModelRegistry) -> None:
    """Raise :class:`AnnouncedVersionMissing` when a model serves a version older than the one a reload
    elsewhere announced and this process's folder lacks the announced version (where it holds it and the reload
    served something else, the version was refused here and logged: nothing to wait for)."""
    announced = {text(k): text(v) for k, v in (await redis.hgetall(ANNOUNCED_KEY)).items()}
    for handle in models.all():
        version = announced.get(handle.name)
        if version is None or version <= handle.manifest.version:
            continue
        if not (models.models_dir / handle.name / version / MANIFEST_FILE).is_file():
            raise AnnouncedVersionMissing(
                f"model {handle.name}: version {version} was served by a reload elsewhere and is not under "
                f"{models.models_dir} here (still {handle.manifest.version}); waiting for it"
            )


async def follow(
    redis: Redis,
    models: ModelRegistry,
    seen: int | None = None,
    interval_s: float = 1.0,
    max_backoff_s: float = 60.0,
) -> None:
    """Reload every model whenever the generation moves past ``seen`` (checked every ``interval_s``); runs until
    cancelled. A version that cannot be served (other sensors) is logged and the current one kept, as the reload
    route answers 409 for it. Any other failure (a bundle still being copied here, a graph ONNX Runtime refuses,
    an announced version not in this folder yet) leaves the generation unseen: tried again after a backoff that
    doubles up to ``max_backoff_s``, so the bundle is loaded once it is whole, and the follower never stops on
    it."""
    pause = interval_s
    while True:
        generation: int | None = None
        try:
            generation = await current(redis)
            if seen is not None and generation != seen:
                await _reload_each(models)
                await _check_announced(redis, models)
            seen, pause = generation, interval_s
        except (RedisError, OSError):
            pass  # Redis down: try again at the next turn
        except AnnouncedVersionMissing as exc:
            log.log(logging.WARNING if pause == interval_s else logging.DEBUG, "%s", exc)
            pause = min(max_backoff_s, pause * 2)
        except Exception:  # noqa: BLE001 - a bad bundle must not end reloads for good
            level = logging.ERROR if pause == interval_s else logging.DEBUG
            log.log(level, "model reload announced elsewhere failed here; retrying", exc_info=True)
            pause = min(max_backoff_s, pause * 2)
        await asyncio.sleep(pause)
