"""Commands packed by hiredis directly are byte for byte what redis-py packs, and everything else still takes
redis-py's path (``service.redis_wire``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from service.redis_clients import redis_client
from service.redis_wire import DirectPacking, pack_directly
from tests.service.conftest import make_settings


class Direct(DirectPacking, Connection):
    pass


COMMANDS: list[tuple[Any, ...]] = [
    ("PING",),
    ("EVALSHA", "a" * 40, 2, "vigil:{s}:a", "vigil:{s}:o", "0.5", 3, repr(0.1 + 0.2), "cpu,mem"),
    ("SET", "k", 1.1, 10, -0, 2**70, -(2**63), b"\x00\xff", "é ü", ""),
    ("SET", "k", float("inf"), float("-inf"), -0.0, 1e300, 5e-324, float(np.float32(0.1))),
    (b"HSET", b"h", "f", 7),
]
FALLBACK: list[tuple[Any, ...]] = [
    ("SCRIPT LOAD", "return 1"),  # a multi-word command name is split by redis-py
    (b"CLIENT SETNAME", b"vigil"),
    ("SET", "k", memoryview(b"abc")),
    ("SET", "k", np.float64(0.25)),  # a subclass of float: redis-py's Encoder decides
]


@pytest.mark.parametrize("args", COMMANDS + FALLBACK)
def test_direct_packing_is_byte_for_byte_redis_pys(args: tuple[Any, ...]) -> None:
    assert b"".join(Direct().pack_command(*args)) == b"".join(Connection().pack_command(*args))


def test_floats_are_written_as_their_repr_as_redis_pys_encoder_writes_them() -> None:
    """The alert script's points travel as floats (``service.alerts.lifecycle_args``): hiredis must write every
    double as ``repr`` does, or the events' timestamps and peaks would change text."""
    rng = np.random.default_rng(7)
    doubles = rng.integers(0, 2**64, 20_000, dtype=np.uint64).view(np.float64)
    singles = rng.random(20_000).astype(np.float32).astype(np.float64)
    edges = np.array([0.0, -0.0, 1e16, 1e-5, 5e-324, 1.7976931348623157e308, np.inf, -np.inf, np.nan])
    values = np.concatenate([doubles, singles, edges]).tolist()
    packed = b"".join(Direct().pack_command("RPUSH", "k", *values))
    assert packed == b"".join(Connection().pack_command("RPUSH", "k", *[repr(v) for v in values]))


def test_what_redis_py_refuses_is_still_refused() -> None:
    for value in (True, None, [1], object()):
        with pytest.raises(DataError):
            Direct().pack_command("SET", "k", value)


def test_the_apps_client_packs_directly_and_keeps_the_urls_connection_class(
    models_dir: Path, redis_url: str, tmp_path: Path
) -> None:
    tcp = redis_client(make_settings(models_dir, redis_url)).connection_pool.connection_class
    assert issubclass(tcp, DirectPacking) and issubclass(tcp, Connection)
    unix = redis_client(make_settings(models_dir, f"unix://{tmp_path}/redis.sock")).connection_pool
    assert issubclass(unix.connection_class, DirectPacking)
    assert issubclass(unix.connection_class, UnixDomainSocketConnection)
    assert pack_directly(unix).connection_class is unix.connection_class  # applied once


async def test_a_real_redis_reads_back_what_was_packed_directly(redis_url: str) -> None:
    client = redis.asyncio.Redis(
        connection_pool=pack_directly(redis.asyncio.ConnectionPool.from_url(redis_url))
    )
    try:
        values = ["é ü", b"\x00\xff", 2**70, 0.1 + 0.2, float(np.float32(0.1)), -0.0]
        await client.delete("wire:test")
        await client.rpush("wire:test", *values)
        stored = await client.lrange("wire:test", 0, -1)
        assert stored == [
            v if isinstance(v, bytes) else str(v).encode() if isinstance(v, str) else repr(v).encode()
            for v in values
        ]
    finally:
        await client.delete("wire:test")
        await client.aclose()
