"""Alertmanager's v2 API as Vigil speaks it: an alert event becomes zero, one or two alerts (labels,
annotations, ``startsAt``/``endsAt``, ``generatorURL``), posted as one JSON array to ``<url>/api/v2/alerts``.

Which events post what: ``firing`` posts the alert firing from the lifecycle's start; ``resolved`` posts it
with ``endsAt``; an escalated ``firing`` (warning reached critical) posts the warning alert resolved and the
critical one firing, since severity is a label and so names another alert. ``pending`` and ``cancelled``
post nothing: like Prometheus, Vigil tells Alertmanager about alerts that fire, and a cancelled alert never did.

Times. ``ts`` and ``started_ts`` are the client's point timestamps, in whatever unit it chose. A value that
reads as a Unix time in seconds, milliseconds, microseconds or nanoseconds between 2000-01-01 and an hour after
Vigil recorded the event is taken as that time; any other value (a row index, a counter) is replaced by the time
Vigil recorded the event, the milliseconds of its ``vigil:alerts`` entry id.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx

ALERTNAME = "VigilAnomaly"
API_PATH = "/api/v2/alerts"
EARLIEST_EPOCH_S = 946_684_800.0  # 2000-01-01T00:00:00Z
CLOCK_SKEW_S = 3600.0
EPOCH_SCALES = (1.0, 1e3, 1e6, 1e9)  # seconds, milliseconds, microseconds, nanoseconds
EXPIRY_RESENDS = 4  # a firing alert expires after this many re-send intervals without news (as in Prometheus)


def recorded_s(event_id: str) -> float:
    """When Vigil recorded an event: the milliseconds of its stream entry id, in seconds."""
    return int(event_id.partition("-")[0]) / 1000.0


def event_time_s(ts: float, recorded: float) -> float:
    """A client timestamp as Unix seconds when it reads as one at some scale (see the module docstring),
    else ``recorded``."""
    for scale in EPOCH_SCALES:
        seconds = ts / scale
        if math.isfinite(seconds) and EARLIEST_EPOCH_S <= seconds <= recorded + CLOCK_SKEW_S:
            return seconds
    return recorded


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def target_name(url: str) -> str:
    """An Alertmanager URL without its credentials: the name in metrics, logs and Redis keys."""
    parts = urlsplit(url)
    return f"{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


@dataclass(frozen=True)
class EventContext:
    """What an event does not carry: the model's version now, and the top sensors' shares of the peak score
    (empty when the peak has left the score history: the sensors are then listed without shares)."""

    version: str
    shares: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Alert:
    """One alert as Alertmanager takes it; ``ends_s`` is None while it fires (each post then sets an expiry)."""

    labels: dict[str, str]
    annotations: dict[str, str]
    starts_s: float
    ends_s: float | None
    generator_url: str
    event_id: str = field(default="")

    @property
    def firing(self) -> bool:
        return self.ends_s is None

    def payload(self, now_s: float, resend_interval_s: float) -> dict[str, Any]:
        """The v2 API object; a firing alert says it ends ``EXPIRY_RESENDS`` re-send intervals from now."""
        if self.ends_s is None:
            ends = max(now_s, self.starts_s) + EXPIRY_RESENDS * resend_interval_s
        else:
            ends = max(self.ends_s, self.starts_s)
        return {
            "labels": self.labels,
            "annotations": self.annotations,
            "startsAt": rfc3339(self.starts_s),
            "endsAt": rfc3339(ends),
            "generatorURL": self.generator_url,
        }

    def dumps(self) -> str:
        return json.dumps(
            [self.labels, self.annotations, self.starts_s, self.ends_s, self.generator_url, self.event_id]
        )

    @classmethod
    def loads(cls, raw: bytes | str) -> Alert:
        labels, annotations, starts, ends, url, event_id = json.loads(raw)
        return cls(labels, annotations, starts, ends, url, event_id)


def event_alerts(
    event: dict[str, Any], context: EventContext, static_labels: dict[str, str], public_url: str
) -> list[Alert]:
    """The alerts one event posts, in order (``event`` as :func:`service.alerts.decode_event` returns it)."""
    state = event["state"]
    if state not in ("firing", "resolved"):
        return []
    recorded = recorded_s(event["id"])
    starts = event_time_s(event["started_ts"], recorded)
    at = event_time_s(event["ts"], recorded)

    def alert(severity: str, ends: float | None, resolved: bool) -> Alert:
        labels = {
            **static_labels,
            "alertname": ALERTNAME,
            "stream": event["stream_id"],
            "model": event["model"],
            "severity": severity,
        }
        url = f"{public_url}/ui?stream={quote(event['stream_id'], safe='')}"
        annotations = describe(event, context, severity, resolved)
        return Alert(labels, annotations, min(starts, at), ends, url, event["id"])

    if state == "resolved":
        return [alert(event["severity"], at, True)]
    if event["escalated"]:
        return [alert("warning", at, True), alert(event["severity"], None, False)]
    return [alert(event["severity"], None, False)]


def describe(event: dict[str, Any], context: EventContext, severity: str, resolved: bool) -> dict[str, str]:
    stream, peak, threshold = event["stream_id"], event["peak_score"], event["threshold"]
    if context.shares:
        top = ", ".join(f"{name} ({share:.0%})" for name, share in context.shares)
        top_sensors = ",".join(f"{name}={share:.4f}" for name, share in context.shares)
    else:
        top = top_sensors = ",".join(event["sensors"])
    if resolved and event["state"] == "firing":
        what = f"escalated to {event['severity']}"
    else:
        what = "resolved" if resolved else f"{severity}, peak score {peak:.4g} over threshold {threshold:.4g}"
    return {
        "summary": f"Anomaly on stream {stream}: {what}",
        "description": (
            f"Model {event['model']} {context.version}".rstrip()
            + f"; top sensors at the peak: {top or 'none'}; lifecycle started at ts {event['started_ts']:g}."
        ),
        "peak_score": f"{peak:.6g}",
        "threshold": f"{threshold:.6g}",
        "top_sensors": top_sensors,
        "model_version": context.version,
        "event_id": event["id"],
    }


@dataclass(frozen=True)
class PostResult:
    """``accepted`` (2xx), ``rejected`` (400, 413, 415, 422: the body itself is refused, so sending it again
    cannot help) or ``failed`` (anything else, or no answer: worth retrying; a 401, 403 or 404 is a proxy or a
    path that is wrong for now, as during a redeploy or a credential rotation, and dropping the batch then
    would lose its alerts); ``detail`` holds the body or the error."""

    outcome: Literal["accepted", "rejected", "failed"]
    status: int | None
    detail: str


BODY_REFUSED = frozenset((400, 413, 415, 422))  # statuses that refuse the posted alerts themselves


class AlertmanagerClient:
    """Posts alert arrays; never raises for HTTP or network failures (they come back as a :class:`PostResult`)."""

    def __init__(self, timeout_s: float) -> None:
        self._http = httpx.AsyncClient(timeout=timeout_s)

    async def post(self, url: str, alerts: list[dict[str, Any]]) -> PostResult:
        try:
            response = await self._http.post(url + API_PATH, json=alerts)
        except httpx.HTTPError as exc:
            return PostResult("failed", None, f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if 200 <= status < 300:
            return PostResult("accepted", status, "")
        refused = status in BODY_REFUSED
        return PostResult("rejected" if refused else "failed", status, response.text[:2000])

    async def aclose(self) -> None:
        await self._http.aclose()
