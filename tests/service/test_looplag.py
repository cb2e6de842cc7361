"""The event loop's lag: a call that blocks the loop shows as a lag at least that long, and the service exports
the histogram from the moment it starts."""

from __future__ import annotations

import asyncio
import re
import time

from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, Histogram

from service import looplag


def observations(histogram: Histogram) -> tuple[float, float, dict[float, float]]:
    """(count, sum, cumulative count per bucket bound) of an unlabelled histogram."""
    count = total = 0.0
    buckets: dict[float, float] = {}
    for metric in histogram.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_bucket"):
                buckets[float(sample.labels["le"])] = sample.value
    return count, total, buckets


def test_a_call_that_blocks_the_loop_is_recorded_as_a_lag_at_least_as_long() -> None:
    histogram = Histogram("lag_seconds", "test", buckets=(0.01, 0.1, 0.2, 1.0), registry=CollectorRegistry())

    async def scenario() -> None:
        async with looplag.watching(histogram, interval_s=0.02):
            await asyncio.sleep(0.05)  # the watch is sleeping when the loop is blocked
            time.sleep(0.3)  # a blocking call on the loop: every task waits behind it
            await asyncio.sleep(0.05)

    asyncio.run(scenario())
    count, total, buckets = observations(histogram)
    assert count >= 2
    assert buckets[0.2] < count <= buckets[1.0]  # one wake-up came more than 200 ms late
    assert total >= 0.2


def test_the_service_exports_its_event_loop_lag(client: TestClient) -> None:
    time.sleep(0.3)  # the watch wakes every 50 ms from start-up on
    text = client.get("/metrics").text
    count = re.search(r"^vigil_event_loop_lag_seconds_count (\S+)$", text, re.M)
    assert count is not None and float(count.group(1)) >= 1
