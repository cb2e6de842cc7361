"""Benchmark 4 - cost growth: Redis memory per stream and points/s as active streams grow, 1 vs 2 uvicorn
workers, and micro-batch size and queue wait as load rises.

1. Memory: N streams (1k, 10k, 100k) are filled straight into Redis with the service's own
   ``WindowStore.append`` (full windows, bound to the model); per stream = ``INFO used_memory`` delta / N, and
   ``MEMORY USAGE`` of one stream's keys, against the raw float32 window (L x C x 4 bytes). Then one stream is
   driven through the API until its score history is full, to show the steady-state footprint of every key
   a stream owns (window, meta, alert state, score history).
2. Points/s with the load (``--mode``, default a: 1 point/request) spread over the first N streams (wrk).
3. 1 vs 2 workers (``vigil serve --workers``): wrk peak for modes a and d.
4. Batch size and queue wait as load rises: open-loop steps of ``--batch-mode`` (default d) at fractions of
   its peak; the service's own histograms (``vigil_batch_size_windows``, ``vigil_queue_wait_seconds``) are
   scraped before and after each step.

Redis runs without persistence here (``--aof`` to turn it on): memory is the same either way, and an AOF
rewrite of gigabytes during a run would be measured instead of Vigil.

    .venv/bin/python -m bench.cost_growth --model tvnet [--sizes 1000,10000,100000] [--quick]
"""

from __future__ import annotations

import argparse
import http.client
from typing import Any

import numpy as np

from bench import bundles, harness, loadtest, report, scrape, workload
from models.manifest import Manifest
from service.codec import BINARY_CONTENT_TYPE, encode_binary
from service.settings import Settings


def memory_rows(
    redis_srv: harness.RedisServer, load: workload.Workload, model: str, sizes: list[int]
) -> list[dict[str, Any]]:
    client = redis_srv.client()
    client.flushall()
    baseline = int(client.info("memory")["used_memory"])
    raw = load.window_length * load.rows.shape[1] * 4
    rows, filled = [], 0
    for size in sizes:
        load.n_streams = size
        seconds = load.prime(redis_srv.url, model, workload.fresh_ts_base(), first=filled)
        filled = size
        used = int(client.info("memory")["used_memory"]) - baseline
        sample = [client.memory_usage(f"vigil:{{{load.prefix}0}}:{k}", samples=0) or 0 for k in ("w", "m")]
        rows.append(
            {
                "streams": size,
                "fill_s": seconds,
                "bytes_per_stream": used / size,
                "ratio_to_raw": used / size / raw,
                "window_key_bytes": sample[0],
                "meta_key_bytes": sample[1],
                "raw_window_bytes": raw,
            }
        )
    client.close()
    return rows


def steady_footprint(
    server: harness.Server, redis_srv: harness.RedisServer, load: workload.Workload, history: int
) -> list[list[Any]]:
    """Drive one fresh stream through the API until its score history holds ``history`` points."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    stream, chunk = "footprint-0", 100
    headers = {"Content-Type": BINARY_CONTENT_TYPE, **server.headers}
    for start in range(0, history + load.window_length + chunk, chunk):
        ts = np.arange(start, start + chunk, dtype=np.float64)
        conn.request(
            "POST",
            "/score",
            encode_binary(stream, ts, load.rows[start % 1000 : start % 1000 + chunk]),
            headers,
        )
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"footprint stream: HTTP {response.status}")
    conn.close()
    client = redis_srv.client()
    raw = load.window_length * load.rows.shape[1] * 4
    rows = []
    for key, what in (
        ("w", "window (packed records)"),
        ("m", "meta hash"),
        ("a", "alert state"),
        ("r", f"score history ({history} points, VIGIL_HISTORY_POINTS default)"),
    ):
        size = client.memory_usage(f"vigil:{{{stream}}}:{key}", samples=0) or 0
        rows.append([what, size, size / raw])
    total = sum(r[1] for r in rows)
    rows.append(["all keys of one stream", total, total / raw])
    client.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description="Vigil cost growth (benchmark 4)")
    parser.add_argument("--model", default="tvnet", choices=bundles.FAMILIES)
    parser.add_argument("--sizes", default="1000,10000,100000", help="active stream counts")
    parser.add_argument("--mode", default="a", help="request kind for points/s at N streams")
    parser.add_argument("--batch-mode", default="d", help="request kind for the batch-size curve")
    parser.add_argument("--fractions", default="0.25,0.5,0.7,0.9,1.1")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--step", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--aof", action="store_true", help="Redis with AOF everysec")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1k and 10k streams, 3 s runs, 3 steps"
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.duration, args.step, args.fractions = "1000,10000", 3.0, 3.0, "0.25,0.7,1.1"
    sizes = [int(s) for s in args.sizes.split(",")]
    fractions = [float(f) for f in args.fractions.split(",")]

    info = report.print_header(f"Cost growth (benchmark 4): {args.model}")
    results = report.Results("cost_growth", info)
    bundle = bundles.family_bundle(args.model)
    manifest = Manifest.load(bundle)
    modes = workload.modes()
    rows = workload.sample_rows()
    stream_load = workload.Workload(
        modes[args.mode], rows, manifest.window_length, manifest.stride, prefix="grow-"
    )
    memory, footprint, growth, batching, per_worker = [], [], [], [], []
    try:
        with harness.redis_server(aof=args.aof) as redis_srv:
            memory = memory_rows(redis_srv, stream_load, manifest.name, sizes)
            for record in memory:
                results.add(kind="memory", **record)
            for workers in (1, 2):
                with harness.vigil_server(bundles.serve_dir([bundle]), redis_srv.url, workers=workers) as srv:
                    pids = {"vigil": srv.pid, "redis": redis_srv.pid}
                    if workers == 1:
                        history = Settings.model_fields["history_points"].default
                        footprint = steady_footprint(srv, redis_srv, stream_load, history)
                        results.add(kind="footprint", rows=footprint)
                        for size in sizes:
                            stream_load.n_streams = size
                            peak = loadtest.measure_peak(
                                srv, stream_load, pids, args.repeat, args.duration, 1, args.connections
                            )
                            growth.append(
                                {
                                    "streams": size,
                                    **peak,
                                    "points_per_s": peak["ok_rps"] * stream_load.mode.points_per_request,
                                }
                            )
                            results.add(kind="growth", **growth[-1])
                        batching = batch_curve(
                            srv,
                            workload.Workload(
                                modes[args.batch_mode], rows, manifest.window_length, manifest.stride
                            ),
                            pids,
                            fractions,
                            args,
                        )
                    stream_load.n_streams = min(sizes)
                    for key, load in (
                        ("a", stream_load),
                        ("d", workload.Workload(modes["d"], rows, manifest.window_length, manifest.stride)),
                    ):
                        peak = loadtest.measure_peak(
                            srv, load, pids, args.repeat, args.duration, 1, args.connections
                        )
                        per_worker.append({"workers": workers, "mode": key, **peak})
                        results.add(kind="workers", **per_worker[-1])
    finally:
        results.save()
    print_tables(memory, footprint, growth, batching, per_worker)


def batch_curve(
    srv: harness.Server,
    load: workload.Workload,
    pids: dict[str, int],
    fractions: list[float],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    peak = loadtest.measure_peak(srv, load, pids, 1, args.duration, 1, args.connections)
    steps = []
    for fraction in fractions:
        before = scrape.scrape(srv.base_url)
        step = loadtest.measure_curve(srv, load, peak["ok_rps"], [fraction], pids, 1, args.step)[0]
        after = scrape.scrape(srv.base_url)
        size = scrape.histogram_delta(before, after, "vigil_batch_size_windows")
        wait = scrape.histogram_delta(before, after, "vigil_queue_wait_seconds")
        infer = scrape.histogram_delta(before, after, "vigil_inference_duration_seconds")
        steps.append(
            {
                **step,
                "batches": size.count,
                "batch_mean": size.mean,
                "batch_p95": size.quantile(0.95),
                "wait_mean_ms": 1000 * wait.mean,
                "wait_p95_ms": 1000 * wait.quantile(0.95),
                "infer_mean_ms": 1000 * infer.mean,
            }
        )
    return steps


def print_tables(
    memory: list[dict[str, Any]],
    footprint: list[list[Any]],
    growth: list[dict[str, Any]],
    batching: list[dict[str, Any]],
    per_worker: list[dict[str, Any]],
) -> None:
    report.print_table(
        [
            "streams",
            "fill s",
            "Redis bytes/stream (INFO delta)",
            "x raw float32 window",
            "MEMORY USAGE window key",
            "meta key",
            "raw window",
        ],
        [
            [
                m["streams"],
                m["fill_s"],
                m["bytes_per_stream"],
                m["ratio_to_raw"],
                m["window_key_bytes"],
                m["meta_key_bytes"],
                m["raw_window_bytes"],
            ]
            for m in memory
        ],
        "Redis memory per stream (windows filled, target <= 1.3x raw)",
    )
    report.print_table(
        ["key", "bytes (MEMORY USAGE)", "x raw window"], footprint, "Steady-state footprint of one stream"
    )
    report.print_table(
        ["active streams", "req/s", "points/s", "p50 ms", "p99 ms", "errors", "vigil CPU %", "redis CPU %"],
        [
            [
                g["streams"],
                g["ok_rps"],
                g["points_per_s"],
                g["p50_ms"],
                g["p99_ms"],
                int(g["errors"]),
                g["vigil_cpu_pct"],
                g["redis_cpu_pct"],
            ]
            for g in growth
        ],
        "Points/s as active streams grow (wrk)",
    )
    report.print_table(
        ["workers", "mode", "req/s", "p50 ms", "p99 ms", "errors", "vigil CPU %", "redis CPU %"],
        [
            [
                w["workers"],
                w["mode"],
                w["ok_rps"],
                w["p50_ms"],
                w["p99_ms"],
                int(w["errors"]),
                w["vigil_cpu_pct"],
                w["redis_cpu_pct"],
            ]
            for w in per_worker
        ],
        "1 vs 2 uvicorn workers (wrk peak)",
    )
    report.print_table(
        [
            "% of peak",
            "offered req/s",
            "achieved req/s",
            "p99 ms",
            "batches",
            "mean batch",
            "p95 batch",
            "mean queue wait ms",
            "p95 queue wait ms",
            "mean inference ms",
        ],
        [
            [
                round(100 * b["fraction"]),
                b["target_rps"],
                b["achieved_rps"],
                b["p99_ms"],
                int(b["batches"]),
                b["batch_mean"],
                b["batch_p95"],
                b["wait_mean_ms"],
                b["wait_p95_ms"],
                b["infer_mean_ms"],
            ]
            for b in batching
        ],
        "Micro-batching as load rises (open loop; from the service's histograms)",
    )


if __name__ == "__main__":
    main()
