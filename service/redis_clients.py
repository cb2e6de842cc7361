"""The Redis clients of a Vigil process: pooled, with the service's timeouts and direct command packing
(``service.redis_wire``), for one Redis or a Redis Cluster."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster

from service.redis_wire import pack_directly
from service.settings import Settings


def redis_client(settings: Settings, blocking_s: float = 0.0) -> Redis:
    """A pooled client for one Redis, or a cluster client when ``redis_cluster`` is set. ``blocking_s``: how
    long its blocking reads may wait on the server, added to the socket timeout so that an idle read is not
    a timeout (with ``VIGIL_REDIS_TIMEOUT_S`` under a read's block, every idle read failed)."""
    socket_timeout = settings.redis_timeout_s + blocking_s
    if settings.redis_cluster:
        cluster = RedisCluster.from_url(
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
