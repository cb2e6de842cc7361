"""Redis commands packed in one C call. redis-py hands every argument of every command to its ``Encoder`` in
Python (type checks, ``str.encode``) before hiredis packs them; a scoring round sends a few hundred arguments
(three per scored point to the alert script, a record per point to the history): with redis-py's packing a
100-point binary stream request cost the event loop 2,950-2,995 µs, without it 2,477-2,712 (two alternated
pairs of ``bench.route_cost --targets stream-columns``).
hiredis's own ``pack_command`` takes ``str``, ``bytes``, ``int`` and ``float`` and writes them as the Encoder
does (UTF-8, ``repr`` for numbers), so commands whose arguments are exactly those types go to it directly;
anything else (a ``bool``, which the Encoder refuses, a ``memoryview``, a subclass, a multi-word command name)
takes redis-py's own path, unchanged.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

_DIRECT = frozenset((str, bytes, int, float))


class DirectPacking:
    """A connection mixin: ``pack_command`` through hiredis alone when every argument allows it."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        one_word = " " not in name if isinstance(name, str) else isinstance(name, bytes) and b" " not in name
        if one_word and all(type(arg) in _DIRECT for arg in args):
            return [hiredis.pack_command(args)]
        packed: list[bytes] = super().pack_command(*args)  # type: ignore[misc]
        return packed


def pack_directly(pool: ConnectionPool) -> ConnectionPool:
    """``pool`` (its connections not yet made) with its connection class packing directly: a subclass of the
    class its URL chose (TCP, TLS or a Unix socket), so everything else stays as redis-py made it."""
    base: type[AbstractConnection] = pool.connection_class
    if not issubclass(base, DirectPacking):
        pool.connection_class = type(f"DirectPacking{base.__name__}", (DirectPacking, base), {})
    return pool
