"""/healthz latency while one client posts large bodies back to back (RELIABILITY.md, large bodies).

    .venv/bin/python bench/healthz_probe.py URL LOAD SECONDS [--key KEY]

LOAD (comma-separated): points (10,000 points, a new stream each time), replay (the same 10,000 points again:
all duplicates), over (10,001 points: 413), keys (one point and 200,000 unknown keys: 422). KEY: an API key
with the score role (default: the test suite's).
"""

from __future__ import annotations

import argparse
import threading
import time
from itertools import count

import httpx
import numpy as np
import orjson


def points_body(stream_id: str, rows: np.ndarray, n: int = 10_000) -> bytes:
    series = rows[np.arange(n) % len(rows)]
    points = [{"ts": float(i), "values": r} for i, r in enumerate(series.tolist())]
    return orjson.dumps({"stream_id": stream_id, "points": points})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url")
    parser.add_argument("load")
    parser.add_argument("seconds", type=float)
    parser.add_argument("--key", default="k-all-0123456789abcdef")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.key}", "content-type": "application/json"}
    rows = np.random.default_rng(0).normal(size=(600, 38)).round(4)
    keys = (
        b'{"stream_id":"keys","points":[{"ts":1,"values":['
        + b",".join([b"0"] * 38)
        + b"]}],"
        + b",".join(b'"k%06d":0' % i for i in range(200_000))
        + b"}"
    )
    ids = count(int(time.time()))
    replay = points_body(f"replay{int(time.time())}", rows)
    over = points_body("over", rows, 10_001)
    kinds = args.load.split(",")
    if "replay" in kinds:
        httpx.post(args.url + "/score", content=replay, headers=headers, timeout=120)  # all duplicates later
    bodies = {
        "points": lambda: points_body(f"b{next(ids)}", rows),
        "keys": lambda: keys,
        "replay": lambda: replay,
        "over": lambda: over,
    }
    stop, latencies = threading.Event(), []
    stats: dict[str, int] = {}

    def load(kind: str) -> None:
        with httpx.Client(base_url=args.url, headers=headers, timeout=120) as client:
            while not stop.is_set():
                key = f"{kind} {client.post('/score', content=bodies[kind]()).status_code}"
                stats[key] = stats.get(key, 0) + 1

    threads = [threading.Thread(target=load, args=(k,)) for k in kinds]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    with httpx.Client(base_url=args.url, timeout=60) as client:
        until = time.monotonic() + args.seconds
        while time.monotonic() < until:
            started = time.perf_counter()
            client.get("/healthz")
            latencies.append(time.perf_counter() - started)
            time.sleep(0.01)
    stop.set()
    for thread in threads:
        thread.join()
    print(
        f"healthz p99 {np.percentile(latencies, 99) * 1e3:.1f} ms, max {max(latencies) * 1e3:.1f} ms, "
        f"n={len(latencies)}, {stats}"
    )


if __name__ == "__main__":
    main()
