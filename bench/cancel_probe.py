"""How often does a task looping on Redis commands survive its cancel? A task runs the service's pattern (a
command through ``service.redis_clients.redis_client``, Redis errors caught, a short sleep) against a private
redis-server; after a random delay it is stopped, by one ``cancel()`` (what the service did before
2026-12-07) or by ``service.tasks.stop_task`` (cancelled again until it ends). A stop that leaves the task
running after ``--grace-s`` counts as survived. Prints one table row per way of stopping.

    .venv/bin/python -m bench.cancel_probe --trials 400
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bench.harness import redis_server
from service.redis_clients import redis_client
from service.settings import Settings
from service.tasks import stop_task


async def loop_on_redis(client: Redis, pause_s: float) -> None:
    while True:
        with contextlib.suppress(RedisError, OSError):  # as the service's side tasks: log, go on
            await client.get("vigil:models:generation")
        await asyncio.sleep(pause_s)


async def trials(url: str, way: str, count: int, pause_s: float, grace_s: float) -> tuple[int, float]:
    """(tasks that survived their stop, mean seconds a stop took)."""
    settings = Settings(redis_url=url, models_dir=".", auth_disabled=True)
    client = redis_client(settings)
    survived, spent = 0, 0.0
    try:
        for _ in range(count):
            task = asyncio.create_task(loop_on_redis(client, pause_s))
            await asyncio.sleep(random.uniform(0.0, 2 * pause_s))
            began = time.perf_counter()
            if way == "one cancel":
                task.cancel()
                await asyncio.wait({task}, timeout=grace_s)
            else:
                await stop_task(task, grace_s, "probe")
            spent += time.perf_counter() - began
            if not task.done():
                survived += 1
                while not task.done():  # end it before the next trial
                    task.cancel()
                    await asyncio.wait({task}, timeout=0.05)
    finally:
        await client.aclose()
    return survived, spent / max(count, 1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=400)
    parser.add_argument("--pause-s", type=float, default=0.002, help="sleep between the task's commands")
    parser.add_argument("--grace-s", type=float, default=0.5, help="how long a stop may take")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    print(
        f"python {sys.version.split()[0]}; {args.trials} trials a way; task pauses {args.pause_s * 1000:g} ms"
    )
    print(f"| way of stopping | survived the stop ({args.grace_s:g} s) | share | mean stop ms |")
    print("|---|---:|---:|---:|")
    with redis_server(aof=False) as server:
        for way in ("one cancel", "stop_task"):
            survived, mean_s = asyncio.run(trials(server.url, way, args.trials, args.pause_s, args.grace_s))
            print(f"| {way} | {survived} | {survived / args.trials:.1%} | {mean_s * 1000:.1f} |")


if __name__ == "__main__":
    main()
