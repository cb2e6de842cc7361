"""Read Vigil's ``/metrics`` (Prometheus text) and turn two scrapes of a histogram into what happened between
them: count, mean and bucket-interpolated quantiles (the way ``histogram_quantile`` computes them)."""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

Sample = dict[tuple[str, frozenset[tuple[str, str]]], float]
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(base_url: str) -> Sample:
    """Every sample of ``/metrics``; none from a server that has no such page (the peers of benchmark 3), whose
    server-side columns are then blank."""
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return {}
        raise
    samples: Sample = {}
    for line in text.splitlines():
        match = _LINE.match(line)
        if match is None or line.startswith("#"):
            continue
        name, _, labels, value = match.groups()
        key = (name, frozenset(_LABEL.findall(labels or "")))
        samples[key] = samples.get(key, 0.0) + float(value)
    return samples


@dataclass(frozen=True)
class HistogramDelta:
    count: float
    total: float
    buckets: list[tuple[float, float]]  # (upper bound, cumulative count), ascending

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else float("nan")

    def quantile(self, q: float) -> float:
        if not self.count:
            return float("nan")
        rank = q * self.count
        lower_bound, lower_count = 0.0, 0.0
        for bound, cumulative in self.buckets:
            if cumulative >= rank:
                if math.isinf(bound):
                    return lower_bound
                span = cumulative - lower_count
                return lower_bound + (bound - lower_bound) * ((rank - lower_count) / span if span else 1.0)
            lower_bound, lower_count = bound, cumulative
        return lower_bound


def histogram_delta(before: Sample, after: Sample, name: str) -> HistogramDelta:
    """``name``'s histogram summed over all label sets, ``after - before``."""

    def totals(samples: Sample) -> tuple[float, float, dict[float, float]]:
        count = sum(v for (n, _), v in samples.items() if n == f"{name}_count")
        total = sum(v for (n, _), v in samples.items() if n == f"{name}_sum")
        buckets: dict[float, float] = {}
        for (n, labels), v in samples.items():
            if n == f"{name}_bucket":
                bound = float(dict(labels)["le"])
                buckets[bound] = buckets.get(bound, 0.0) + v
        return count, total, buckets

    c0, s0, b0 = totals(before)
    c1, s1, b1 = totals(after)
    buckets = sorted((bound, b1[bound] - b0.get(bound, 0.0)) for bound in b1)
    return HistogramDelta(c1 - c0, s1 - s0, buckets)


def counter_delta(before: Sample, after: Sample, name: str) -> float:
    """``name``'s counter summed over all label sets, ``after - before``."""
    return sum(v for (n, _), v in after.items() if n == name) - sum(
        v for (n, _), v in before.items() if n == name
    )
