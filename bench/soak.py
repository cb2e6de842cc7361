"""Soak: a bounded run at a steady share of capacity, sampling each minute what would reveal a leak.

Open-loop load (Poisson arrivals, ``bench/loadgen.py``) of one request kind (``bench/workload.py``, default
``b``: 10 points per JSON request over 100 primed streams, whose capped score histories fill within the
first minutes) against ``vigil serve`` with its own redis-server (AOF everysec, as deployed). Every interval
(a minute by default) it prints one row: requests answered, non-2xx statuses, p50/p99 latency from the
scheduled send, the server's resident memory and open file descriptors (from /proc), its CPU, and Redis's
used memory and key count. The verdict compares the last interval with the second (the first warms
allocators, pools and the capped score histories): flat means RSS within 10 % (or 20 MiB), descriptors
within 10, Redis memory within 10 % (or 20 MiB), p99 within 3x, and no error. Capacity is measured with the
same generator (its CPU competes with the server on a small machine).

    .venv/bin/python -m bench.soak --minutes 10              # 70 % of the measured capacity
    .venv/bin/python -m bench.soak --minutes 10 --rate 250   # a fixed rate (requests/s)
    .venv/bin/python -m bench.soak --minutes 3 --interval 30 # a smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import redis

from bench import bundles, harness, report, workload
from bench.loadgen import run_open_loop
from models.manifest import Manifest


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def redis_memory(client: redis.Redis) -> tuple[float, int]:
    info: dict[str, Any] = client.info("memory")
    return info["used_memory"] / 2**20, int(client.dbsize())


def largest_keys(client: redis.Redis, count: int = 5) -> list[tuple[str, float, int]]:
    """The ``count`` keys holding most of Redis's memory: (key, KiB, entries of a stream or list, else 0), to
    say what any growth of the soak's Redis memory is."""
    sizes = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        length = client.xlen(key) if kind == b"stream" else client.llen(key) if kind == b"list" else 0
        sizes.append((key.decode(), (client.memory_usage(key, samples=0) or 0) / 1024, int(length)))
    return sorted(sizes, key=lambda item: -item[1])[:count]


def measure_capacity(server: harness.Server, work: workload.Workload, requests: int = 3000) -> float:
    """Requests/s the server completes through 32 connections kept busy by this script's own generator (so
    its CPU, which competes with the server on a small machine, is part of the measurement, as in the soak)."""
    headers = work.headers(server.headers)
    base = workload.fresh_ts_base()

    def make(i: int) -> bytes:
        return workload.http_request("POST", work.mode.path, headers, work.body(i, base))

    started = time.perf_counter()
    result = run_open_loop(server.base_url, make, requests / 0.5, 0.5, poisson=False, max_connections=32)
    return result.ok / (time.perf_counter() - started)


def within(first: float, last: float, share: float, absolute: float) -> bool:
    return last - first <= max(share * first, absolute)


def verdict(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """Second interval against the last (the first one warms up)."""
    if len(rows) < 3:
        return {}
    a, b = rows[1], rows[-1]
    return {
        "rss": within(a["rss_mib"], b["rss_mib"], 0.10, 20.0),
        "fds": b["fds"] - a["fds"] <= 10,
        "redis_memory": within(a["redis_mib"], b["redis_mib"], 0.10, 20.0),
        "p99": b["p99_ms"] <= 3 * max(a["p99_ms"], 10.0),
        "no_errors": all(r["errors"] == 0 and r["unfinished"] == 0 for r in rows),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Vigil soak: steady open-loop load, leaks sampled each interval"
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the run")
    parser.add_argument(
        "--rate", type=float, default=None, help="requests/s (default: --fraction x capacity)"
    )
    parser.add_argument("--fraction", type=float, default=0.7, help="share of the wrk-measured capacity")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--mode", default="b", help="request kind (bench/workload.py)")
    parser.add_argument(
        "--streams", type=int, default=100, help="few enough that capped histories fill early"
    )
    parser.add_argument("--model", default="tvnet", choices=bundles.FAMILIES)
    parser.add_argument("--max-connections", type=int, default=256)
    args = parser.parse_args()

    info = report.print_header("Soak: steady load, leaks sampled each interval")
    results = report.Results("soak", info)
    bundle = bundles.family_bundle(args.model)
    manifest = Manifest.load(bundle)
    models_dir = bundles.serve_dir([bundle])
    rows: list[dict[str, Any]] = []
    with (
        harness.redis_server(aof=True) as store,
        harness.vigil_server(models_dir, store.url, intra_op_threads=1) as server,
    ):
        work = workload.Workload(
            workload.modes()[args.mode],
            workload.sample_rows(),
            manifest.window_length,
            manifest.stride,
            n_streams=args.streams,
            prefix="soak-",
        )
        work.prime(store.url, manifest.name, workload.fresh_ts_base())
        rate = args.rate
        if rate is None:
            capacity = measure_capacity(server, work)
            rate = args.fraction * capacity
            print(
                f"capacity (this generator, 32 connections): {capacity:,.0f} req/s; soak rate {rate:,.0f} req/s\n"
            )
        ts_base = workload.fresh_ts_base()
        headers = work.headers(server.headers)
        client = store.client()
        meter = harness.CPUMeter({"vigil": server.pid, "redis": store.pid})
        intervals = max(1, round(args.minutes * 60 / args.interval))
        sent = 0
        keys = (
            "minute",
            "ok",
            "non_2xx",
            "p50_ms",
            "p99_ms",
            "rss_mib",
            "fds",
            "vigil_cpu_pct",
            "redis_mib",
            "keys",
        )
        columns = [
            "min",
            "ok",
            "non-2xx",
            "p50 ms",
            "p99 ms",
            "RSS MiB",
            "fds",
            "vigil CPU %",
            "Redis MiB",
            "keys",
        ]
        print("| " + " | ".join(columns) + " |")
        print("| " + " | ".join("---" for _ in columns) + " |", flush=True)
        for index in range(intervals):

            def make(i: int, first: int = sent) -> bytes:
                return workload.http_request("POST", work.mode.path, headers, work.body(first + i, ts_base))

            meter.start()
            result = run_open_loop(
                server.base_url, make, rate, args.interval, max_connections=args.max_connections
            )
            cpu = meter.stop()
            sent += result.sent
            redis_mib, n_keys = redis_memory(client)
            row = {
                "minute": round((index + 1) * args.interval / 60, 2),
                "ok": result.ok,
                "errors": result.errors,
                "non_2xx": " ".join(f"{k}:{v}" for k, v in sorted(result.statuses.items()) if k != 200)
                or "-",
                "unfinished": result.unfinished,
                "generator_cpu_pct": result.generator_cpu_pct,
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "rss_mib": rss_mib(server.pid),
                "fds": open_fds(server.pid),
                "vigil_cpu_pct": cpu["vigil"],
                "redis_mib": redis_mib,
                "keys": n_keys,
            }
            rows.append(row)
            results.add(**row, rate=rate)
            cells = [row[k] for k in keys]
            print("| " + " | ".join(report.fmt(v) for v in cells) + " |", flush=True)
        largest = ", ".join(f"{key} {kib:,.0f} KiB ({n:,} entries)" for key, kib, n in largest_keys(client))
        print(f"\nRedis's largest keys at the end: {largest}")
        results.add(largest_keys=largest)
        client.close()
    flat = verdict(rows)
    results.add(verdict=flat, rate=rate)
    print(f"\nverdict (interval 2 against the last): {flat or 'needs at least 3 intervals'}")
    print(f"command: {report.command_line()}")
    results.save()
    return 0 if all(flat.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
