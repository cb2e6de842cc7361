"""Hot reloads that reach every process: a reload answered by one API process (one of ``--workers N``, one
replica behind a load balancer) bumps a generation counter in Redis, and every process, the shared inference
process included, reloads when it sees the counter move. Without it a reload reached only the process that
answered it: with two workers some requests still got the old version, and in shared mode the inference
process never reloaded at all (tests/service/test_models_admin.py, tests/reliability/test_shared_inference.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from models.manifest import BundleError, Manifest, find_bundles
from service.errors import VigilError
from service.redis_clients import text
from service.registry import ModelRegistry

log = logging.getLogger(__name__)

GENERATION_KEY = "vigil:models:generation"
ANNOUNCED_KEY = "vigil:models:announced"  # hash: model name -> the version the last reload of it served


async def announce(redis: Redis, served: dict[str, str] | None = None) -> None:
    """Tell every process a reload happened, with the version each model it changed now serves (best effort: a
    failure is logged; this process has reloaded)."""
    try:
        if served:  # before the generation that makes followers look (two slots on a Redis Cluster: no MULTI)
            await redis.hset(ANNOUNCED_KEY, mapping=cast(dict[FieldT, EncodableT], served))
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


def _holds(models: ModelRegistry, name: str, version: str) -> bool:
    """This process's folder holds ``version`` of ``name`` whole: its manifest reads and names that version (a
    copy in progress, or a folder copied from another version before its manifest is rewritten, does not)."""
    try:
        return Manifest.load(models.models_dir / name / version).version == version
    except BundleError:
        return False


async def _announced_missing(redis: Redis, models: ModelRegistry) -> dict[str, str]:
    """The models whose version announced by a reload elsewhere is newer than the one served here and not in
    this process's folder yet (a replica whose copy of the folder is still syncing), each logged once. Where the
    folder holds it and the reload served something else, the version was refused here and logged: nothing to
    wait for."""
    announced = {text(k): text(v) for k, v in (await redis.hgetall(ANNOUNCED_KEY)).items()}
    missing = {}
    for handle in models.all():
        version = announced.get(handle.name)
        if version is None or version <= handle.manifest.version or _holds(models, handle.name, version):
            continue
        log.warning(
            "model %s: version %s was served by a reload elsewhere and is not under %s here (still %s); "
            "waiting for it",
            handle.name,
            version,
            models.models_dir,
            handle.manifest.version,
        )
        missing[handle.name] = version
    return missing


async def _reload_arrived(models: ModelRegistry, awaited: dict[str, str]) -> dict[str, str]:
    """Reload each awaited model whose version has arrived; returns those still awaited."""
    left = {}
    for name, version in awaited.items():
        if not _holds(models, name, version):
            left[name] = version
            continue
        try:
            changes = await models.reload(name)
        except VigilError as exc:
            log.error("model %s: version %s refused here: %s", name, version, exc.detail)
            continue
        log.info("model %s: version %s arrived and is served: %s", name, version, changes)
    return left


async def follow(
    redis: Redis,
    models: ModelRegistry,
    seen: int | None = None,
    interval_s: float = 1.0,
    max_backoff_s: float = 60.0,
) -> None:
    """Reload every model whenever the generation moves past ``seen`` (checked every ``interval_s``); runs until
    cancelled. A version that cannot be served (other sensors) is logged and the current one kept, as the reload
    route answers 409 for it. Any other failure (a bundle still being copied here, a graph ONNX Runtime refuses)
    leaves the generation unseen: tried again after a backoff that doubles up to ``max_backoff_s``, so the
    bundle is loaded once it is whole, and the follower never stops on it. A version announced elsewhere that
    this folder does not hold yet (checked after each reload and at the first turn, for a process that starts
    behind) is awaited on its own, looked for at every turn and served when it arrives, without holding back
    later reloads."""
    pause = interval_s
    awaited: dict[str, str] | None = None  # None: not checked yet
    while True:
        generation: int | None = None
        try:
            generation = await current(redis)
            if seen is not None and generation != seen:
                await _reload_each(models)
                awaited = await _announced_missing(redis, models)
            elif awaited is None:
                awaited = await _announced_missing(redis, models)
            elif awaited:
                awaited = await _reload_arrived(models, awaited)
            seen, pause = generation, interval_s
        except (RedisError, OSError):
            pass  # Redis down: try again at the next turn
        except Exception:  # noqa: BLE001 - a bad bundle must not end reloads for good
            level = logging.ERROR if pause == interval_s else logging.DEBUG
            log.log(level, "model reload announced elsewhere failed here; retrying", exc_info=True)
            pause = min(max_backoff_s, pause * 2)
        await asyncio.sleep(pause)
