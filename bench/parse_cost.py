"""What reading a request costs the event loop before any scoring: the JSON parse and check of one stateless
window, through the fast path (``service.codec.numeric_window``) and through the validated path it skips, and
the request head's budget (``service.http_limits.HeadBudget``) over a head followed by its body; and, on the
answer's side, the top sensors of every scored point (``models.scoring.top_contributions_rows``) against the
partition-and-sort it replaced and a plain stable sort, and the rows answer's objects (``ScoredPoints.rows``)
against a comprehension per point.

    .venv/bin/python -m bench.parse_cost [--length 100] [--sensors 38] [--repeat 2000]

Single-threaded microseconds per call (median of five timings), on the machine as it is: compare rows of
one run, not runs of different days.
"""

from __future__ import annotations

import argparse
import statistics
import timeit
from collections.abc import Callable
from functools import partial

import numpy as np
import orjson
from pydantic_core import from_json

from bench import report
from models.scoring import top_contributions_rows
from service.codec import _rows_array, numeric_window, parse_score_json, validated_window
from service.http_limits import HeadBudget
from service.results import ScoredPoints


def per_call_us(call: Callable[[], object], repeat: int) -> float:
    return 1e6 * statistics.median(t / repeat for t in timeit.repeat(call, number=repeat, repeat=5))


def partition_then_sort(shares: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k form used until 2026-12-06: a partition of every row, then a sort of the k taken."""
    taken = np.argpartition(-shares, k - 1, axis=-1)[..., :k]
    values = np.take_along_axis(shares, taken, axis=-1)
    order = np.lexsort((taken, -values), axis=-1)
    return np.take_along_axis(taken, order, axis=-1), np.take_along_axis(values, order, axis=-1)


def rows_per_point(points: ScoredPoints) -> list[dict[str, object]]:
    """The rows answer as built until 2026-12-06: a comprehension of contribution objects per point."""
    names = points.sensor_names
    return [
        {
            "ts": ts,
            "score": score,
            "level": level,
            "contributions": [{"sensor": names[i], "share": v} for i, v in zip(idx, share, strict=True)],
        }
        for ts, score, level, idx, share in zip(
            points.ts,
            points.scores,
            points.levels,
            points.top_index.tolist(),
            points.top_share.tolist(),
            strict=True,
        )
    ]


def stable_sort(shares: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    taken = np.argsort(-shares, axis=-1, kind="stable")[..., :k]
    return taken, np.take_along_axis(shares, taken, axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--sensors", type=int, default=38)
    parser.add_argument("--repeat", type=int, default=2000)
    args = parser.parse_args()
    info = report.print_header("Parse cost of one stateless window")
    window = np.random.default_rng(0).normal(size=(args.length, args.sensors)).round(4).tolist()
    body = orjson.dumps({"window": window, "model": "tvnet"})
    raw = orjson.loads(body)
    assert numeric_window(raw, body) is not None  # the fast path takes this body
    head = (
        b"POST /score?format=columns HTTP/1.1\r\nHost: vigil\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer key\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    budget = HeadBudget(32 * 1024, 100)

    def take() -> int:
        budget.reset()
        return budget.take(head + body)

    rows = [
        ("parse_score_json (what the route runs)", per_call_us(lambda: parse_score_json(body), args.repeat)),
        ("  orjson.loads", per_call_us(lambda: orjson.loads(body), args.repeat)),
        ("  numeric_window (check and array)", per_call_us(lambda: numeric_window(raw, body), args.repeat)),
        (
            "    the array: np.fromiter over the chained rows",
            per_call_us(lambda: _rows_array(raw["window"]), args.repeat),
        ),
        (
            "    the array: np.asarray of the nested rows (until 2026-12-06)",
            per_call_us(lambda: np.asarray(raw["window"], dtype=np.float64), args.repeat),
        ),
        (
            "validated path: pydantic-core parse + wire model + array",
            per_call_us(lambda: validated_window(from_json(body, allow_inf_nan=True)), args.repeat),
        ),
        ("  pydantic-core from_json", per_call_us(lambda: from_json(body, allow_inf_nan=True), args.repeat)),
        ("HeadBudget.take over head + body", per_call_us(take, args.repeat)),
    ]
    shares = np.random.default_rng(1).dirichlet(np.ones(args.sensors), size=args.length).astype(np.float32)
    for name, top in (
        ("top 3 sensors of every point: top_contributions_rows", top_contributions_rows),
        ("  partition then sort (until 2026-12-06)", partition_then_sort),
        ("  stable sort of every row", stable_sort),
    ):
        rows.append((name, per_call_us(partial(top, shares, 3), args.repeat // 4)))
    index, share = top_contributions_rows(shares, 3)
    sensors = [f"sensor-{i}" for i in range(args.sensors)]
    scored = ScoredPoints(
        list(map(float, range(args.length))),
        shares.sum(axis=1).tolist(),
        ["normal"] * args.length,
        index,
        share,
        sensors,
    )
    assert scored.rows() == rows_per_point(scored)
    rows.append(("rows answer of every point: ScoredPoints.rows", per_call_us(scored.rows, args.repeat // 4)))
    rows.append(
        (
            "  a comprehension per point (until 2026-12-06)",
            per_call_us(lambda: rows_per_point(scored), args.repeat // 4),
        )
    )
    print(
        f"body: {len(body):,} bytes ({args.length}x{args.sensors} window; top sensors of its {args.length} points)\n"
    )
    report.print_table(["step", "µs per call"], [(name, f"{us:.1f}") for name, us in rows])
    results = report.Results("parse_cost", info)
    for name, us in rows:
        results.add(step=name.strip(), us=us)
    results.save()


if __name__ == "__main__":
    main()
