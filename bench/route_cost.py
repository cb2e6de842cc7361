"""What one stateless window costs the event loop's thread inside the app, without HTTP: the ASGI app is called
in-process by ``--concurrency`` tasks that each send one 100x38 window after another, and the event loop's own
thread CPU time (``time.thread_time``) is divided by the requests served. With no sockets, no uvicorn and no
load generator on the cores, the figure moves by a few per cent between runs where wrk's peaks move by
20-30 %, so it is the measure for changes to the route's own Python work (the loop's thread is what saturates
first: inference runs on its own thread, mostly outside the interpreter lock).

    .venv/bin/python -m bench.route_cost [--requests 3000] [--concurrency 32] [--repeat 3]

Rows: Vigil's ``POST /score`` with a stateless window (rows and columns answers, a bench API key, every
middleware as served) and the micro-batcher peer of ``bench.peers`` (``bench/microbatch_server.py``) on the
same bundle. Columns: loop-thread µs per request (median of the repeats, and their range), the process's CPU
µs per request (every thread, inference included) and requests/s of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI
from starlette.types import Message

from bench import bundles, harness, report
from bench.microbatch_server import create_app as microbatch_app
from models.manifest import Manifest
from service.app import create_app
from service.settings import Settings


@dataclass(frozen=True)
class Target:
    name: str
    app: FastAPI
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Run:
    loop_us: float
    process_us: float
    per_s: float


async def call(app: FastAPI, target: Target, body: bytes) -> int:
    """One request through the ASGI app; returns the answer's status."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": target.path,
        "raw_path": target.path.encode(),
        "query_string": target.query,
        "root_path": "",
        "headers": [*target.headers, (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    delivered = False
    status = 0

    async def receive() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])

    await app(scope, receive, send)
    return status


async def measure(target: Target, body: bytes, requests: int, concurrency: int, repeat: int) -> list[Run]:
    runs: list[Run] = []
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(target.app.router.lifespan_context(target.app))
        for _ in range(100):  # warm-up: first batches, first allocations
            status = await call(target.app, target, body)
            if status != 200:
                raise RuntimeError(f"{target.name}: warm-up request answered {status}")
        each = max(1, requests // concurrency)

        async def client() -> None:
            for _ in range(each):
                status = await call(target.app, target, body)
                if status != 200:
                    raise RuntimeError(f"{target.name}: answered {status}")

        for _ in range(repeat):
            wall, process, loop = time.perf_counter(), time.process_time(), time.thread_time()
            await asyncio.gather(*(client() for _ in range(concurrency)))
            served = each * concurrency
            wall, process, loop = (
                time.perf_counter() - wall,
                time.process_time() - process,
                time.thread_time() - loop,
            )
            runs.append(Run(1e6 * loop / served, 1e6 * process / served, served / wall))
    return runs


def vigil_target(name: str, models_dir: Path, redis_url: str, key: str, query: bytes) -> Target:
    settings = Settings(
        models_dir=models_dir,
        redis_url=redis_url,
        provider="cpu",
        api_keys=[{"name": "bench", "key": key, "roles": ["score"]}],
    )
    headers = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {key}".encode())]
    return Target(name, create_app(settings), "/score", query, headers)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tvnet", choices=bundles.FAMILIES)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    info = report.print_header("Event-loop CPU of one stateless window, in-process (no HTTP)")
    bundle = bundles.family_bundle(args.model)
    manifest = Manifest.load(bundle)
    rng = np.random.default_rng(0)
    window = rng.normal(size=(manifest.window_length, manifest.n_features))
    window = window * np.asarray(manifest.normalisation.scale) + np.asarray(manifest.normalisation.mean)
    body = orjson.dumps({"window": window.round(4).tolist()})
    models_dir = bundles.serve_dir([bundle])
    key = harness.bench_api_key()
    results = report.Results("route_cost", info)
    rows = []
    with harness.redis_server(aof=False) as redis:
        targets = [
            vigil_target("Vigil stateless, columns", models_dir, redis.url, key, b"format=columns"),
            vigil_target("Vigil stateless, rows", models_dir, redis.url, key, b""),
            Target(
                "micro-batcher peer",
                microbatch_app(bundle),
                "/score",
                b"",
                [(b"content-type", b"application/json")],
            ),
        ]
        for target in targets:
            runs = asyncio.run(measure(target, body, args.requests, args.concurrency, args.repeat))
            loop_us = [r.loop_us for r in runs]
            row = {
                "target": target.name,
                "loop_us": statistics.median(loop_us),
                "loop_us_min": min(loop_us),
                "loop_us_max": max(loop_us),
                "process_us": statistics.median(r.process_us for r in runs),
                "per_s": statistics.median(r.per_s for r in runs),
            }
            results.add(**row)
            rows.append(
                (
                    row["target"],
                    f"{row['loop_us']:.0f} ({row['loop_us_min']:.0f}-{row['loop_us_max']:.0f})",
                    f"{row['process_us']:.0f}",
                    f"{row['per_s']:.0f}",
                )
            )
    print(
        f"bundle: {bundle.name} ({args.model}); {args.requests} requests x {args.repeat} repeats, "
        f"{args.concurrency} at a time\n"
    )
    report.print_table(
        ["target", "loop-thread µs per request (range)", "process CPU µs per request", "requests/s"], rows
    )
    results.save()


if __name__ == "__main__":
    main()
