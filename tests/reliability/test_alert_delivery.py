"""Alert delivery under faults, through real ``vigil serve`` processes, a real Alertmanager and a tap between
them (tests/service/live_alertmanager.py: a pass-through proxy that records every POST and Alertmanager's
answer, and can refuse connections like a dead host).

Each scenario streams series with injected anomalies (lifecycles that fire and resolve, and some still firing at
the end), breaks something, and then audits: every ``firing``/``resolved`` event of ``vigil:alerts`` is in a
post Alertmanager accepted (lost = 0; resolved ones with the right ``endsAt``), and Alertmanager's active alerts
are exactly the lifecycles whose last event is ``firing``, from their start. Figures (events, posts, lost, lag
p50/p99 from event to accepted post) go to artifacts/reliability/figures.jsonl and docs/alertmanager-figures.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis

from service.alertmanager import recorded_s, target_name
from service.alerts import EVENTS_KEY, decode_event
from service.notify import GROUP_PREFIX
from tests.conftest import SAMPLE
from tests.reliability.conftest import RedisProcess
from tests.service.conftest import auth
from tests.service.live import LiveServer
from tests.service.live_alertmanager import AlertmanagerProcess, AlertmanagerTap, seconds, wait_until
from training.data import load_series

CHUNK = 10
STREAMS = ("line-1", "line-2", "line-3")
# Spikes (+5 on every sensor: critical) fire at once and resolve once they leave the 100-point window. The last
# one is still in the window when the series ends: that lifecycle ends firing (line-2 has none: it ends resolved).
SPIKES = ((100, 115), (300, 315), (560, 600))


def settings_env(tap: AlertmanagerTap, **overrides: str) -> dict[str, str]:
    return {
        "VIGIL_ALERTMANAGER__URLS": json.dumps([tap.url]),
        "VIGIL_ALERTMANAGER__RESEND_INTERVAL_S": "2",
        "VIGIL_ALERTMANAGER__LEASE_S": "3",
        "VIGIL_ALERTMANAGER__BACKOFF_INITIAL_S": "0.2",
        "VIGIL_ALERTMANAGER__BACKOFF_MAX_S": "1",
        "VIGIL_ALERTMANAGER__TIMEOUT_S": "5",
        "VIGIL_PUBLIC_URL": "http://vigil.test",
        **overrides,
    }


@pytest.fixture(scope="module")
def workload() -> dict[str, np.ndarray]:
    calm = load_series(SAMPLE / "train.txt.gz", max_rows=3600)[3000:]
    out = {}
    for index, stream in enumerate(STREAMS):
        series = calm.copy()
        for start, stop in SPIKES if index != 1 else SPIKES[:2]:
            series[start + 3 * index : stop + 3 * index] += 5.0
        out[stream] = series
    return out


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[AlertmanagerProcess]:
    process = AlertmanagerProcess(tmp_path / "alertmanager")
    yield process
    process.kill()


class Pusher:
    """POSTs rows of each stream (ts: epoch seconds, an hour ago + row) and keeps the request latencies."""

    def __init__(self, workload: dict[str, np.ndarray]) -> None:
        self.workload = workload
        self.t0 = float(int(time.time()) - 3600)
        self.latencies_s: list[float] = []

    def push(self, server: LiveServer, streams: tuple[str, ...], start: int, stop: int) -> None:
        with httpx.Client(base_url=server.url, headers=auth("scorer"), timeout=30) as client:
            for offset in range(start, stop, CHUNK):
                for stream in streams:
                    rows = self.workload[stream][offset : min(offset + CHUNK, stop)]
                    points = [{"ts": self.t0 + offset + i, "values": r.tolist()} for i, r in enumerate(rows)]
                    began = time.perf_counter()
                    response = client.post("/score", json={"stream_id": stream, "points": points})
                    self.latencies_s.append(time.perf_counter() - began)
                    assert response.status_code == 200, response.text


def outstanding(store: redis.Redis, tap: AlertmanagerTap) -> int:
    """Events the tap's Alertmanager has not accepted: read but unacknowledged plus not read."""
    group = GROUP_PREFIX + target_name(tap.url)
    for info in store.xinfo_groups(EVENTS_KEY):
        if info["name"].decode() == group:
            return int(info["pending"]) + int(info["lag"] if info["lag"] is not None else 10**9)
    return 10**9


def all_delivered(store: redis.Redis, tap: AlertmanagerTap) -> Callable[[], bool]:
    return lambda: store.xlen(EVENTS_KEY) > 0 and outstanding(store, tap) == 0


@dataclass
class Audit:
    events: int
    postable: int
    posts: int
    alerts_posted: int
    repeats: int
    lost: list[str]
    wrong_end: list[str]
    lags: list[tuple[float, float]]  # (recorded at, lag), Unix seconds
    expected_active: set[tuple[str, str, float]]

    def lag_s(self, q: float, since: float = 0.0) -> float:
        """The q-th percentile of the lags of the events recorded after ``since``."""
        return float(np.percentile([lag for at, lag in self.lags if at >= since], q))

    def figures(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "postable_events": self.postable,
            "posts_accepted": self.posts,
            "alerts_posted": self.alerts_posted,
            "repeated_alerts": self.repeats,
            "lost": len(self.lost),
            "lag_p50_s": round(self.lag_s(50), 3),
            "lag_p99_s": round(self.lag_s(99), 3),
        }


def audit(store: redis.Redis, tap: AlertmanagerTap) -> Audit:
    """Every firing/resolved event against the posts Alertmanager accepted (see the module docstring)."""
    events = [decode_event(entry_id, fields) for entry_id, fields in store.xrange(EVENTS_KEY)]
    postable = [e for e in events if e["state"] in ("firing", "resolved")]
    accepted = sorted(tap.accepted(), key=lambda post: post.finished)
    first: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
    for post in accepted:
        for alert in post.alerts:
            status = "resolved" if seconds(alert["endsAt"]) <= post.started else "firing"
            first.setdefault((alert["annotations"]["event_id"], status), (post.finished, alert))
    lost, wrong, lags = [], [], []
    for event in postable:
        got = first.get((event["id"], event["state"]))
        if got is None:
            lost.append(f"{event['id']} {event['stream_id']} {event['state']}")
            continue
        lags.append((recorded_s(event["id"]), got[0] - recorded_s(event["id"])))
        if event["state"] == "resolved" and seconds(got[1]["endsAt"]) != event["ts"]:
            wrong.append(f"{event['id']}: endsAt {got[1]['endsAt']}, event ts {event['ts']}")
    last = {e["stream_id"]: e for e in postable}
    expected = {(s, e["severity"], e["started_ts"]) for s, e in last.items() if e["state"] == "firing"}
    alerts_posted = sum(len(post.alerts) for post in accepted)
    return Audit(
        events=len(events),
        postable=len(postable),
        posts=len(accepted),
        alerts_posted=alerts_posted,
        repeats=alerts_posted - len(first),
        lost=lost,
        wrong_end=wrong,
        lags=lags,
        expected_active=expected,
    )


def active(alertmanager: AlertmanagerProcess) -> set[tuple[str, str, float]]:
    return {
        (a["labels"]["stream"], a["labels"]["severity"], seconds(a["startsAt"]))
        for a in alertmanager.alerts(alertname="VigilAnomaly")
    }


def check(result: Audit, alertmanager: AlertmanagerProcess) -> None:
    assert result.postable >= 2 * len(STREAMS), "the injected anomalies must fire and resolve"
    assert not result.lost, f"lifecycle events never accepted by Alertmanager: {result.lost}"
    assert not result.wrong_end, result.wrong_end
    assert result.expected_active, "some lifecycles end firing"
    wait_until(
        "Alertmanager holding exactly the lifecycles that end firing",
        lambda: active(alertmanager) == result.expected_active,
        timeout_s=10,
    )


def metric(server: LiveServer, name: str, **labels: str) -> float:
    total = 0.0
    for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def handled(server: LiveServer) -> float:
    """Events this server's deliverer took from the stream (delivered, refused, skipped or expired)."""
    return metric(server, "vigil_alert_deliveries_total")


@pytest.mark.parametrize("outage_s", [5.0, pytest.param(30.0, marks=pytest.mark.slow)])
def test_alertmanager_down_while_alerts_fire_and_resolve_loses_no_lifecycle(
    outage_s: float,
    aof_redis: RedisProcess,
    alertmanager: AlertmanagerProcess,
    live_server: Callable[..., LiveServer],
    workload: dict[str, np.ndarray],
    figures: Callable[..., None],
) -> None:
    tap = AlertmanagerTap(alertmanager.url)
    server = live_server(aof_redis.url, **settings_env(tap))
    store = aof_redis.client()
    pusher = Pusher(workload)
    pusher.push(server, STREAMS, 0, 250)  # the first spike fires and resolves, delivered at once
    wait_until("the first lifecycles delivered", all_delivered(store, tap), timeout_s=30)
    before = len(pusher.latencies_s)

    alertmanager.kill()
    tap.down()  # Vigil's connections are refused, as by a dead host
    down_at, down_at_s = time.monotonic(), time.time()
    pusher.push(server, STREAMS, 250, 600)  # the second spike fires and resolves, the third fires
    stranded = outstanding(store, tap)
    assert stranded > 0
    time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
    failed = metric(server, "vigil_alertmanager_posts_total", outcome="failed")
    alertmanager.start()
    tap.up()
    recovery_s = wait_until(
        "every event delivered after the restart", all_delivered(store, tap), timeout_s=60
    )

    result = audit(store, tap)
    check(result, alertmanager)

    def p99_ms(latencies: list[float]) -> float:
        return round(1000 * float(np.percentile(latencies, 99)), 1)

    figures(
        outage_s=outage_s,
        **result.figures(),
        events_waiting_at_restart=stranded,
        failed_attempts=int(failed),
        recovery_s=round(recovery_s, 2),
        lag_p50_s_events_during_outage=round(result.lag_s(50, since=down_at_s), 3),
        lag_p99_s_events_before_outage=round(
            float(np.percentile([lag for at, lag in result.lags if at < down_at_s], 99)), 3
        ),
        score_p99_ms_before_outage=p99_ms(pusher.latencies_s[:before]),
        score_p99_ms_during_outage=p99_ms(pusher.latencies_s[before:]),
    )
    assert failed >= 2, "the deliverer retried while Alertmanager was down"


def test_vigil_killed_mid_delivery_resumes_from_its_stored_progress(
    aof_redis: RedisProcess,
    alertmanager: AlertmanagerProcess,
    live_server: Callable[..., LiveServer],
    workload: dict[str, np.ndarray],
    figures: Callable[..., None],
) -> None:
    tap = AlertmanagerTap(alertmanager.url, delay_s=1.0)  # every post takes a second: one is surely in flight
    first = live_server(aof_redis.url, log_name="first.log", **settings_env(tap))
    store = aof_redis.client()
    pusher = Pusher(workload)
    pusher.push(first, STREAMS, 0, 250)
    wait_until("the first lifecycles delivered", all_delivered(store, tap), timeout_s=30)
    pusher.push(first, STREAMS, 250, 450)
    wait_until("a post in flight", lambda: tap.in_flight > 0 and outstanding(store, tap) > 0, timeout_s=15)
    first.kill()  # SIGKILL in the middle of a post
    left = outstanding(store, tap)
    assert left > 0

    second = live_server(aof_redis.url, log_name="second.log", **settings_env(tap))
    created = store.xlen(EVENTS_KEY)
    pusher.push(second, STREAMS, 450, 600)
    new = store.xlen(EVENTS_KEY) - created
    took = wait_until("every event delivered by the new process", all_delivered(store, tap), timeout_s=60)

    result = audit(store, tap)
    check(result, alertmanager)
    # It took over exactly what the killed process had not finished, and what came after: nothing acknowledged
    # before the kill was delivered again, nothing was skipped.
    assert handled(second) == left + new
    figures(
        **result.figures(),
        events_unfinished_at_kill=left,
        events_after_restart=new,
        handled_by_new_process=int(handled(second)),
        delivered_within_s=round(took, 2),
    )


def test_two_replicas_deliver_every_event_once_between_them(
    aof_redis: RedisProcess,
    alertmanager: AlertmanagerProcess,
    live_server: Callable[..., LiveServer],
    workload: dict[str, np.ndarray],
    figures: Callable[..., None],
) -> None:
    tap = AlertmanagerTap(alertmanager.url)
    # Posts are then event posts only; a longer lease keeps a busy machine from moving it mid-test.
    env = settings_env(tap, VIGIL_ALERTMANAGER__RESEND_INTERVAL_S="60", VIGIL_ALERTMANAGER__LEASE_S="6")
    replicas = [live_server(aof_redis.url, log_name=f"replica-{i}.log", **env) for i in range(2)]
    store = aof_redis.client()
    pusher = Pusher(workload)
    for start, stop in ((0, 250), (250, 600)):  # both replicas score (and raise events), interleaved
        pusher.push(replicas[0], STREAMS[::2], start, stop)
        pusher.push(replicas[1], STREAMS[1::2], start, stop)
    wait_until("every event delivered", all_delivered(store, tap), timeout_s=60)

    result = audit(store, tap)
    check(result, alertmanager)
    posts = [metric(r, "vigil_alertmanager_posts_total") for r in replicas]
    leaders = [metric(r, "vigil_alert_delivery_leader") for r in replicas]
    assert sorted(leaders) == [0, 1] and min(posts) == 0, "one replica delivers, the other stands by"
    # One replica posts each event's alerts once: the pair must not multiply that (1.2x at most).
    expected_alerts = result.postable + sum(1 for e in _escalations(store))
    assert result.alerts_posted <= 1.2 * expected_alerts
    assert result.posts <= 1.2 * result.postable
    figures(
        **result.figures(), posts_by_replica=posts, alerts_per_event=result.alerts_posted / expected_alerts
    )


def _escalations(store: redis.Redis) -> list[dict[str, Any]]:
    """Escalations post two alerts (the warning resolved, the critical firing)."""
    events = [decode_event(entry_id, fields) for entry_id, fields in store.xrange(EVENTS_KEY)]
    return [e for e in events if e["escalated"]]
