"""The Redis clients of a Vigil process: pooled, with the service's timeouts and direct command packing
(``service.redis_wire``), for one Redis or a Redis Cluster."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError, RedisClusterUnreachableError, SlotNotCoveredError

from service.redis_wire import pack_directly
from service.settings import Settings


def text(value: bytes | str) -> str:
    """Redis replies are bytes (decode_responses is off); the stubs also allow str."""
    return value.decode() if isinstance(value, bytes) else value


def redis_client(settings: Settings, blocking_s: float = 0.0) -> Redis:
    """A pooled client for one Redis, or a cluster client when ``redis_cluster`` is set. ``blocking_s``: how
    long its blocking reads may wait on the server, added to the socket timeout so that an idle read is not
    a timeout (with ``VIGIL_REDIS_TIMEOUT_S`` under a read's block, every idle read failed)."""
    socket_timeout = settings.redis_timeout_s + blocking_s
    if settings.redis_cluster:
        cluster = ServiceCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_pool_size,
            socket_timeout=socket_timeout,
            socket_connect_timeout=settings.redis_timeout_s,
        )
        return cluster  # type: ignore[return-value]  # the commands Vigil uses share one interface
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_timeout_s,
        socket_timeout=socket_timeout,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    return Redis(connection_pool=pack_directly(pool))


BLOCKING_READ_S = 1.0  # the alert feed's and delivery's XREAD block (service.feed, service.notify)


# Raised by the cluster client when no node answers (or none serves a slot): not ``RedisError`` subclasses in
# redis-py, so a store's ``except RedisError`` (503 store_unavailable) missed them and a full outage was a 500.
_UNREACHABLE = (RedisClusterUnreachableError, SlotNotCoveredError)


def _unavailable(exc: Exception) -> ConnectionError:
    error = ConnectionError(f"Redis Cluster unavailable: {exc}")
    error.__cause__ = exc
    return error


class ServiceCluster(RedisCluster):
    """The cluster client with "no node reachable" as a ``ConnectionError``, as with one Redis: every store
    turns it into :class:`service.errors.StoreUnavailable`. Other cluster errors (a cross-slot command: a bug)
    stay what they are."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().execute_command(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from exc

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise ValueError("a cluster pipeline takes no shard_hint")
        return _ServicePipeline(self, transaction)  # type: ignore[abstract]  # as RedisCluster.pipeline makes it


class _ServicePipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        try:
            replies = await super().execute(raise_on_error, allow_redirections)
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from exc
        return [_unavailable(r) if isinstance(r, _UNREACHABLE) else r for r in replies]
