"""What one request costs the event loop's thread inside the app, without HTTP: the ASGI app is called
in-process by ``--concurrency`` tasks that each send request after request, and the event loop's own thread
CPU time (``time.thread_time``) is divided by the requests served. With no sockets, no uvicorn and no load
generator on the cores, the figure moves by a few per cent between runs where wrk's peaks move by 20-30 %, so
it is the measure for changes to the route's own Python work (the loop's thread is what saturates first:
inference runs on its own thread, mostly outside the interpreter lock).

    .venv/bin/python -m bench.route_cost [--targets columns,rows,peer,stream,stream-columns] [--requests 3000]
        [--concurrency 32] [--repeat 3] [--points 100]

Targets: Vigil's ``POST /score`` with a stateless 100x38 window (rows and columns answers), the micro-batcher
peer of ``bench.peers`` (``bench/microbatch_server.py``) on the same bundle and window, and Vigil's binary
stream requests (``--points`` real rows of the bundled sample per request, each client its own stream, Redis
with AOF as deployed; rows and columns answers). Every Vigil request carries a bench API key and passes every
middleware as served. Columns: loop-thread µs per request (median of the repeats, and their range) and per
point, the process's CPU µs per request (every thread, inference included), redis-server's CPU µs per request
(commands, scripts and AOF writes: the store's share, which every replica of a deployment adds to one Redis)
and requests/s of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI
from starlette.types import Message

from bench import bundles, harness, report, workload
from bench.microbatch_server import create_app as microbatch_app
from models.manifest import Manifest
from service.app import create_app
from service.codec import BINARY_CONTENT_TYPE, encode_binary
from service.settings import Settings

Bodies = Callable[[int], Iterator[bytes]]  # client number -> that client's request bodies, in order


@dataclass(frozen=True)
class Target:
    name: str
    app: FastAPI
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    bodies: Bodies
    points_per_request: int
    prime: Bodies | None = None  # client -> binary stream requests sent before the warm-up, not measured


@dataclass(frozen=True)
class Run:
    loop_us: float
    process_us: float
    per_s: float
    redis_us: float  # redis-server's CPU (every thread: commands, scripts, AOF) per request
    refused: int  # requests answered 503 (shed), among those the other figures divide by


def same_body(body: bytes) -> Bodies:
    return lambda client: itertools.repeat(body)


def stream_bodies(prefix: str, values: np.ndarray, points: int) -> Bodies:
    """Client ``c`` sends its own stream ``<prefix>-<c>``: each body the next ``points`` points (binary frame),
    the rows of ``values`` taken in turn; the warm-up's client is ``-1``."""

    def bodies(client: int) -> Iterator[bytes]:
        stream = f"{prefix}-{client}"
        for start in itertools.count(0, points):
            index = np.arange(start, start + points)
            yield encode_binary(stream, index.astype(np.float64), values[index % len(values)])

    return bodies


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


async def measure(target: Target, requests: int, concurrency: int, repeat: int, redis_pid: int) -> list[Run]:
    runs: list[Run] = []
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(target.app.router.lifespan_context(target.app))
        if target.prime is not None:
            binary = [(b"content-type", BINARY_CONTENT_TYPE.encode())]
            primer = replace(
                target, path="/score", query=b"", headers=[*binary, *target.headers[1:]]
            )  # the auth header kept
            for owner in range(-1, concurrency):
                for body in target.prime(owner):
                    status = await call(target.app, primer, body)
                    if status != 200:
                        raise RuntimeError(f"{target.name}: priming request answered {status}")
        warm_up = target.bodies(-1)
        for _ in range(100):  # warm-up: first batches, first allocations
            status = await call(target.app, target, next(warm_up))
            if status != 200:
                raise RuntimeError(f"{target.name}: warm-up request answered {status}")
        each = max(1, requests // concurrency)
        sources = [target.bodies(client) for client in range(concurrency)]

        refused = 0

        async def client(bodies: Iterator[bytes]) -> None:
            nonlocal refused
            for _ in range(each):
                status = await call(target.app, target, next(bodies))
                if status == 503:  # shed (a batch whose every item was refused): counted, not served
                    refused += 1
                elif status != 200:
                    raise RuntimeError(f"{target.name}: answered {status}")

        for _ in range(repeat):
            refused = 0
            wall, process, loop = time.perf_counter(), time.process_time(), time.thread_time()
            store = harness.cpu_seconds(redis_pid)
            await asyncio.gather(*(client(bodies) for bodies in sources))
            served = each * concurrency
            wall, process, loop, store = (
                time.perf_counter() - wall,
                time.process_time() - process,
                time.thread_time() - loop,
                harness.cpu_seconds(redis_pid) - store,
            )
            runs.append(
                Run(1e6 * loop / served, 1e6 * process / served, served / wall, 1e6 * store / served, refused)
            )
    return runs


def batch_bodies(prefix: str, values: np.ndarray, items: int, primed: int) -> tuple[Bodies, Bodies]:
    """``/score/batch`` JSON bodies: client ``c`` owns ``items`` streams ``<prefix>-<c>-<i>`` and each body
    carries the next point of every one of them; the streams are primed with ``primed`` points first (binary
    requests), so that every later point completes a window as in steady state."""

    def stream(client: int, item: int) -> str:
        return f"{prefix}-{client}-{item}"

    def prime(client: int) -> Iterator[bytes]:
        for item in range(items):
            index = np.arange(primed)
            yield encode_binary(
                stream(client, item), index.astype(np.float64), values[(index + item) % len(values)]
            )

    def bodies(client: int) -> Iterator[bytes]:
        for ts in itertools.count(primed):
            rows = values[(ts + np.arange(items)) % len(values)].tolist()
            batch = [
                {"stream_id": stream(client, item), "points": [{"ts": ts, "values": rows[item]}]}
                for item in range(items)
            ]
            yield orjson.dumps({"items": batch})

    return bodies, prime


def vigil_target(
    name: str, settings: Settings, key: str, query: bytes, content_type: bytes, bodies: Bodies, points: int
) -> Target:
    headers = [(b"content-type", content_type), (b"authorization", f"Bearer {key}".encode())]
    return Target(name, create_app(settings), "/score", query, headers, bodies, points)


TARGETS = ("columns", "rows", "peer", "stream", "stream-columns", "batch")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tvnet", choices=bundles.FAMILIES)
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help=f"comma-separated, of {', '.join(TARGETS)}"
    )
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--points", type=int, default=100, help="points per stream request")
    parser.add_argument("--batch-items", type=int, default=100, help="streams per /score/batch request")
    args = parser.parse_args()
    chosen = [name for name in args.targets.split(",") if name]
    unknown = sorted(set(chosen) - set(TARGETS))
    if unknown:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    info = report.print_header("Event-loop CPU of one request, in-process (no HTTP)")
    bundle = bundles.family_bundle(args.model)
    manifest = Manifest.load(bundle)
    rng = np.random.default_rng(0)
    scale, mean = np.asarray(manifest.normalisation.scale), np.asarray(manifest.normalisation.mean)
    window = rng.normal(size=(manifest.window_length, manifest.n_features)) * scale + mean
    body = orjson.dumps({"window": window.round(4).tolist()})
    series = workload.sample_rows(4000)  # the bundled sample's real rows: scores and alerts as in service
    models_dir = bundles.serve_dir([bundle])
    key = harness.bench_api_key()
    results = report.Results("route_cost", info)
    rows = []
    with harness.redis_server() as redis:
        settings = Settings(
            models_dir=models_dir,
            redis_url=redis.url,
            provider="cpu",
            api_keys=[{"name": "bench", "key": key, "roles": ["score"]}],
        )
        json_type = b"application/json"

        def target(name: str) -> Target:
            binary = BINARY_CONTENT_TYPE.encode()
            stream = stream_bodies(name, series, args.points)
            stream_label = f"Vigil binary stream request ({args.points} points)"
            if name == "columns":
                label = "Vigil stateless window, columns"
                return vigil_target(label, settings, key, b"format=columns", json_type, same_body(body), 1)
            if name == "rows":
                label = "Vigil stateless window, rows"
                return vigil_target(label, settings, key, b"", json_type, same_body(body), 1)
            if name == "stream":
                label = f"{stream_label}, rows"
                return vigil_target(label, settings, key, b"", binary, stream, args.points)
            if name == "stream-columns":
                label = f"{stream_label}, columns"
                return vigil_target(label, settings, key, b"format=columns", binary, stream, args.points)
            if name == "batch":
                items = args.batch_items
                bodies, prime = batch_bodies(name, series, items, manifest.window_length - 1)
                label = f"Vigil /score/batch, {items} streams x 1 point (JSON)"
                measured = vigil_target(label, settings, key, b"", json_type, bodies, items)
                return replace(measured, path="/score/batch", prime=prime)
            label, app = "micro-batcher peer (stateless window)", microbatch_app(bundle)
            return Target(label, app, "/score", b"", [(b"content-type", json_type)], same_body(body), 1)

        for name in chosen:
            measured = target(name)
            runs = asyncio.run(measure(measured, args.requests, args.concurrency, args.repeat, redis.pid))
            loop_us = [r.loop_us for r in runs]
            row = {
                "target": measured.name,
                "loop_us": statistics.median(loop_us),
                "loop_us_min": min(loop_us),
                "loop_us_max": max(loop_us),
                "loop_us_per_point": statistics.median(loop_us) / measured.points_per_request,
                "process_us": statistics.median(r.process_us for r in runs),
                "redis_us": statistics.median(r.redis_us for r in runs),
                "per_s": statistics.median(r.per_s for r in runs),
                "refused": sum(r.refused for r in runs),
            }
            results.add(**row)
            rows.append(
                (
                    row["target"],
                    f"{row['loop_us']:.0f} ({row['loop_us_min']:.0f}-{row['loop_us_max']:.0f})",
                    f"{row['loop_us_per_point']:.1f}",
                    f"{row['process_us']:.0f}",
                    f"{row['redis_us']:.0f}",
                    f"{row['per_s']:.0f}",
                    str(row["refused"]),
                )
            )
    print(
        f"bundle: {bundle.name} ({args.model}, stride {manifest.stride}); {args.requests} requests x "
        f"{args.repeat} repeats, {args.concurrency} at a time\n"
    )
    headers = [
        "target",
        "loop µs per request (range)",
        "loop µs per point",
        "process CPU µs per request",
        "redis-server CPU µs per request",
        "requests/s",
        "answered 503 (all repeats)",
    ]
    report.print_table(headers, rows)
    results.save()


if __name__ == "__main__":
    main()
