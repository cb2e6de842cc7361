"""What a filtered alert read (``GET /alerts?stream_id=``, a filtered feed's catch-up) costs the event loop and
Redis when the stream is rare in the retained event stream.

    .venv/bin/python -m bench.alert_reads [--events 100000] [--every 25000] [--repeat 3]

A private ``redis-server`` (no persistence) on a free port holds ``--events`` alert events, one in ``--every`` of
stream "rare", the rest of "busy". Two ways to read the rare stream's events (at most 100) are timed: the
service's ``AlertTracker.read_events`` (the scan runs in Redis, ``FILTER_LUA``, ``FILTER_PAGE`` entries a call)
and the client-side scan it replaced (pages of 100 entries read with XRANGE, every entry decoded, the stream's
kept: what ``read_events`` did until 2026-12-07). Columns: wall time of one read, the event loop thread's CPU
time for it (``time.thread_time``: how long it holds every other request of the process), the Redis calls it
made and the longest one (``INFO commandstats``: how long one call holds every other client of Redis).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harness import free_port  # noqa: E402
from service.alert_events import EVENTS_KEY, decode_or_skip  # noqa: E402
from service.alerts import FILTER_PAGE, AlertTracker  # noqa: E402
from service.redis_clients import text  # noqa: E402

FIELDS: dict[str | bytes, str | bytes | int | float] = {
    "model": "tvnet",
    "state": "firing",
    "severity": "warning",
    "ts": "1.0",
    "started_ts": "1.0",
    "peak_score": "2.0",
    "threshold": "1.0",
    "sensors": "s1,s2,s3",
    "escalated": "0",
}


async def client_side_scan(client: Redis, stream_id: str, limit: int) -> list[dict[str, Any]]:
    """The read before the scan moved into Redis: pages of 100 entries, each decoded, the stream's kept."""
    start, out = "-", list[dict[str, Any]]()
    while len(out) < limit:
        batch = await client.xrange(EVENTS_KEY, min=start, max="+", count=max(limit, 100))
        if not batch:
            break
        for entry_id, fields in batch:
            event = decode_or_skip(entry_id, fields)
            if event is not None and event["stream_id"] == stream_id:
                out.append(event)
        start = f"({text(batch[-1][0] or b'0-0')}"
    return out[:limit]


def slowest_call_us(store: redis.Redis) -> tuple[int, float]:
    """Calls and the mean µs per call of the commands a read uses, since the last CONFIG RESETSTAT."""
    stats: dict[str, Any] = store.info("commandstats")
    # A script's own XRANGE calls are counted too: a read's calls are its scripts, or its XRANGEs without them.
    scripts = [stats[k] for k in ("cmdstat_evalsha", "cmdstat_eval") if k in stats]
    used = scripts or [stats[k] for k in ("cmdstat_xrange",) if k in stats]
    calls = sum(int(s["calls"]) for s in used)
    return calls, max((float(s["usec_per_call"]) for s in used), default=0.0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--every", type=int, default=25_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", data],
            stdout=subprocess.DEVNULL,
        )
        try:
            store = redis.Redis(port=port)
            for _ in range(100):
                try:
                    store.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            for start in range(0, args.events, 1000):
                pipe = store.pipeline(transaction=False)
                for i in range(start, min(start + 1000, args.events)):
                    stream = "rare" if i % args.every == 0 else "busy"
                    pipe.xadd(EVENTS_KEY, {"stream_id": stream, **FIELDS})  # type: ignore[dict-item]
                pipe.execute()
            asyncio.run(measure(store, port, args.repeat, args.events))
        finally:
            server.terminate()
            server.wait(10)
    return 0


async def measure(store: redis.Redis, port: int, repeat: int, events: int) -> None:
    client = Redis(port=port)
    tracker = AlertTracker(client, 3600, events)
    ways: dict[str, Callable[[], Awaitable[list[dict[str, Any]]]]] = {
        f"in Redis (FILTER_LUA, {FILTER_PAGE} a call)": lambda: tracker.read_events(None, "rare", 100),
        "client-side scan (before)": lambda: client_side_scan(client, "rare", 100),
    }
    print(f"{events} events in the stream; reading stream 'rare' ({repeat} reads each, medians)\n")
    print("| read | events found | wall ms | event loop CPU ms | Redis calls | slowest call's mean µs |")
    print("|---|---|---|---|---|---|")
    for name, read in ways.items():
        walls, cpus, found, calls, slowest = [], [], 0, 0, 0.0
        for _ in range(repeat):
            store.config_resetstat()
            began, cpu = time.perf_counter(), time.thread_time()
            found = len(await read())
            walls.append((time.perf_counter() - began) * 1e3)
            cpus.append((time.thread_time() - cpu) * 1e3)
            calls, slowest = slowest_call_us(store)
        print(
            f"| {name} | {found} | {statistics.median(walls):.0f} | {statistics.median(cpus):.0f} | {calls} | "
            f"{slowest:.0f} |"
        )
    await client.aclose()


if __name__ == "__main__":
    sys.exit(main())
