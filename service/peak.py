"""What an alert event does not carry, for its Alertmanager annotations: the version of its model now, and the
shares of the top sensors at its peak, found in the stream's score history (service/history.py).

The event names the top sensors at the peak but not their shares; the history holds the last
``VIGIL_HISTORY_POINTS`` scored points of the stream with their top sensors and shares, so the peak is found
there while it is recent (a firing event's peak always is, unless the history is off). Otherwise the
annotations list the sensors without shares.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from service.alertmanager import EventContext, recorded_s
from service.errors import StoreUnavailable, VigilError
from service.history import ScoreHistory
from service.registry import ModelRegistry

Describe = Callable[[dict[str, Any]], Awaitable[EventContext]]


def peak_context(
    models: ModelRegistry, history: ScoreHistory, history_points: int, wait_s: float = 1.0
) -> Describe:
    """The model's version and the top sensors' shares at the event's peak, found in the stream's score
    history. A firing event's peak was scored by the request that raised it, whose history write may land a
    moment after the event: while the history has no point as new as the event, the lookup is retried for up
    to ``wait_s`` after the event was recorded."""

    async def describe(event: dict[str, Any]) -> EventContext:
        try:
            manifest = models.get(event["model"]).manifest
        except VigilError:
            return EventContext("")
        give_up = time.monotonic() + max(0.0, min(wait_s, recorded_s(event["id"]) + wait_s - time.time()))
        while True:
            shares, behind = await _peak_shares(history, event, manifest.feature_names, history_points)
            if shares or not behind or event["state"] != "firing" or time.monotonic() >= give_up:
                return EventContext(manifest.version, shares)
            await asyncio.sleep(0.05)

    return describe


async def _peak_shares(
    history: ScoreHistory, event: dict[str, Any], names: list[str], history_points: int
) -> tuple[tuple[tuple[str, float], ...], bool]:
    """The shares at the peak, if the history holds it, and whether the history is behind the event (its
    newest point older than the event's: the write of the request that raised it has not landed yet)."""
    if history_points == 0 or not event["sensors"]:
        return (), False
    try:
        recent = await history.recent(event["stream_id"], history_points, names)
    except StoreUnavailable:
        return (), False
    for point in reversed(recent):
        top = [(c["sensor"], float(c["share"])) for c in point["contributions"]]
        if [name for name, _ in top] == event["sensors"] and math.isclose(
            point["score"], event["peak_score"], rel_tol=1e-5, abs_tol=1e-12
        ):
            return tuple(top), False
    return (), not recent or recent[-1]["ts"] < event["ts"]
