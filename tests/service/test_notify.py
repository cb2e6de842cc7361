"""Alert delivery against a real Alertmanager (Debian's ``prometheus-alertmanager`` on a free port) with a
webhook receiver behind it: the alert as Alertmanager shows it, the notification the receiver gets, its
resolution, silences, and a refusal. (Faults, restarts and replicas: tests/reliability/test_alert_delivery.py.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.alertmanager import BODY_REFUSED, AlertmanagerClient, PostResult, rfc3339
from service.app import create_app
from tests.conftest import SAMPLE
from tests.service.conftest import auth, make_settings, points_body
from tests.service.live_alertmanager import AlertmanagerProcess, WebhookReceiver, seconds, wait_until
from training.data import load_series

RESEND_S = 2.0
PUBLIC_URL = "https://vigil.example.com"
CHUNK = 10  # the bundle's stride: an event is seen as soon as the window that raises it is scored


def event_groups(store: Any) -> list[dict[str, Any]]:
    """The consumer groups on the event stream; none while the stream does not exist yet (the leader's
    XGROUP CREATE ... MKSTREAM makes both at once, and XINFO GROUPS on a missing key is an error)."""
    return list(store.xinfo_groups("vigil:alerts")) if store.exists("vigil:alerts") else []


@pytest.fixture(scope="module")
def calm() -> np.ndarray:
    """600 rows of the sample's normal (training) data that the test bundle never saw."""
    return load_series(SAMPLE / "train.txt.gz", max_rows=3600)[3000:]


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def alertmanager(tmp_path: Path, hook: WebhookReceiver) -> Iterator[AlertmanagerProcess]:
    process = AlertmanagerProcess(tmp_path / "alertmanager", hook.url)
    yield process
    process.stop()


def delivering_client(models_dir: Path, redis_url: str, url: str, lease_s: float = 3) -> TestClient:
    settings = make_settings(
        models_dir,
        redis_url,
        alertmanager={
            "urls": [url],
            "resend_interval_s": RESEND_S,
            "lease_s": lease_s,
            "backoff_max_s": 1,
            "labels": {"env": "test"},
        },
        public_url=PUBLIC_URL + "/",
    )
    return TestClient(create_app(settings), headers=auth("all"))


def push_until(
    client: TestClient,
    stream_id: str,
    series: np.ndarray,
    t0: float,
    start: int,
    wanted: Callable[[dict[str, Any]], bool],
) -> tuple[int, dict[str, Any]]:
    """POST rows from ``start`` (ts = t0 + row) until an event matches; returns the next row and the event."""
    for offset in range(start, len(series), CHUNK):
        body = points_body(stream_id, series[offset : offset + CHUNK], 0)
        for point, row in zip(body["points"], range(offset, offset + CHUNK), strict=False):
            point["ts"] = t0 + row
        response = client.post("/score", json=body)
        assert response.status_code == 200, response.text
        for event in response.json()["alerts"]:
            if wanted(event):
                return offset + CHUNK, event
    raise AssertionError(f"{stream_id}: no such event in the series")


def spiked(calm: np.ndarray, start: int, stop: int) -> np.ndarray:
    series = calm.copy()
    series[start:stop] += 5.0  # every sensor far off (the sample is min-max scaled to [0, 1]): critical
    return series


def test_delivery_shows_the_alert_in_alertmanager_notifies_and_resolves_within_a_resend_interval(
    models_dir: Path,
    redis_url: str,
    clean_redis: Any,
    calm: np.ndarray,
    alertmanager: AlertmanagerProcess,
    hook: WebhookReceiver,
) -> None:
    series = spiked(calm, 300, 320)
    t0 = float(int(time.time()) - 3600)  # the client's ts: epoch seconds, an hour ago
    with delivering_client(models_dir, redis_url, alertmanager.url) as client:
        row, firing = push_until(
            client, "pump-7", series, t0, 0, lambda e: e["state"] == "firing" and e["started_ts"] >= t0 + 280
        )
        starts_at = rfc3339(firing["started_ts"])

        def shown() -> list[dict[str, Any]]:
            return [a for a in alertmanager.alerts(stream="pump-7") if a["startsAt"] == starts_at]

        wait_until("the firing alert in Alertmanager", lambda: bool(shown()), timeout_s=15)
        (alert,) = shown()
        assert alert["labels"] == {
            "alertname": "VigilAnomaly",
            "stream": "pump-7",
            "model": "tvnet",
            "severity": firing["severity"],
            "env": "test",
        }
        assert alert["status"]["state"] == "active"
        assert alert["generatorURL"] == f"{PUBLIC_URL}/ui?stream=pump-7"
        notes = alert["annotations"]
        assert "pump-7" in notes["summary"] and firing["severity"] in notes["summary"]
        assert float(notes["peak_score"]) == pytest.approx(firing["peak_score"], rel=1e-5)
        assert float(notes["threshold"]) == pytest.approx(firing["threshold"], rel=1e-5)
        assert (notes["model_version"], notes["event_id"]) == ("test", firing["id"])
        top = [pair.split("=") for pair in notes["top_sensors"].split(",")]
        assert [name for name, _ in top] == firing["sensors"]  # the sensors at the peak, with their shares
        shares = [float(share) for _, share in top]
        assert all(0 < s <= 1 for s in shares) and sum(shares) <= 1.0001 and shares == sorted(shares)[::-1]
        assert f"{firing['sensors'][0]} (" in notes["description"]

        def heard(status: str) -> list[dict[str, Any]]:
            return [
                a
                for a in hook.alerts()
                if a["labels"]["stream"] == "pump-7"
                and seconds(a["startsAt"]) == firing["started_ts"]
                and a["status"] == status
            ]

        wait_until("the receiver's firing notification", lambda: bool(heard("firing")), timeout_s=15)
        assert heard("firing")[0]["generatorURL"] == f"{PUBLIC_URL}/ui?stream=pump-7"

        _, resolved = push_until(
            client,
            "pump-7",
            series,
            t0,
            row,
            lambda e: e["state"] == "resolved" and e["started_ts"] == firing["started_ts"],
        )
        took = wait_until("the alert resolved in Alertmanager", lambda: not shown(), timeout_s=15)
        assert took <= RESEND_S
        wait_until("the receiver's resolved notification", lambda: bool(heard("resolved")), timeout_s=15)
        assert seconds(heard("resolved")[0]["endsAt"]) == resolved["ts"]


def test_a_silence_in_alertmanager_keeps_the_notification_from_the_receiver(
    models_dir: Path,
    redis_url: str,
    clean_redis: Any,
    calm: np.ndarray,
    alertmanager: AlertmanagerProcess,
    hook: WebhookReceiver,
) -> None:
    silence = alertmanager.silence(stream="quiet-1", alertname="VigilAnomaly")
    series = spiked(calm, 300, 320)
    t0 = float(int(time.time()) - 3600)

    def is_firing(event: dict[str, Any]) -> bool:
        return event["state"] == "firing"

    with delivering_client(models_dir, redis_url, alertmanager.url) as client:
        push_until(client, "quiet-1", series, t0, 0, is_firing)
        push_until(client, "loud-1", series, t0, 0, is_firing)
        wait_until(
            "loud-1 notified",
            lambda: any(a["labels"]["stream"] == "loud-1" for a in hook.alerts()),
            timeout_s=15,
        )
        time.sleep(2.0)  # group_wait (1 s) and a margin: quiet-1 would have been notified by now
        (quiet,) = alertmanager.alerts(stream="quiet-1")
    assert quiet["status"]["state"] == "suppressed" and quiet["status"]["silencedBy"] == [silence]
    assert not [a for a in hook.alerts() if a["labels"]["stream"] == "quiet-1"]


def metric(client: TestClient, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in client.get("/metrics").text.splitlines():
        if line.startswith((f"{name}{{", f"{name} ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name}{{{wanted}}}")


def test_a_wrong_path_is_retried_with_backoff_and_loses_nothing(
    models_dir: Path,
    redis_url: str,
    clean_redis: Any,
    calm: np.ndarray,
    alertmanager: AlertmanagerProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 404 (a proxy or a path wrong for now, as during a redeploy) is no refusal of the alerts: the batch is
    posted again after a backoff and its events stay unacknowledged, so a fix of the route delivers them."""
    url = alertmanager.url + "/no-such-prefix"  # Alertmanager answers 404 page not found
    target = url.removeprefix("http://")
    series = spiked(calm, 300, 320)

    def count(name: str, **labels: str) -> float:
        return metric(client, name, alertmanager=target, **labels)

    def waiting() -> int:
        (group,) = [
            g
            for g in clean_redis.xinfo_groups("vigil:alerts")
            if g["name"] == f"vigil-notify:{target}".encode()
        ]
        return int(group["pending"]) + int(group["lag"] or 0)

    with (
        caplog.at_level(logging.WARNING, logger="service.notify"),
        delivering_client(models_dir, redis_url, url) as client,
    ):
        push_until(
            client, "misrouted-1", series, float(int(time.time())), 0, lambda e: e["state"] == "firing"
        )
        wait_until(
            "the post tried three times",
            lambda: count("vigil_alertmanager_posts_total", kind="event", outcome="failed") >= 3,
            timeout_s=15,
        )
        assert waiting() >= 1
        assert count("vigil_alertmanager_posts_total", kind="event", outcome="rejected") == 0
        assert count("vigil_alert_deliveries_total", outcome="rejected") == 0
        assert count("vigil_alert_deliveries_total", outcome="delivered") == 0
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert retries and "404" in retries[0] and "page not found" in retries[0]


def test_alerts_alertmanager_refuses_are_a_rejection(alertmanager: AlertmanagerProcess) -> None:
    """What the client calls a rejection (not retried) is Alertmanager refusing the alerts themselves."""

    async def post() -> PostResult:
        client = AlertmanagerClient(5.0)
        try:
            return await client.post(alertmanager.url, [{"labels": {}}])  # an alert without a label
        finally:
            await client.aclose()

    result = asyncio.run(post())
    assert result.outcome == "rejected" and result.status in BODY_REFUSED, result


def test_a_stream_deleted_while_its_alert_fires_has_it_resolved_at_the_next_resend(
    models_dir: Path,
    redis_url: str,
    clean_redis: Any,
    calm: np.ndarray,
    alertmanager: AlertmanagerProcess,
    hook: WebhookReceiver,
) -> None:
    series = spiked(calm, 300, 320)
    t0 = float(int(time.time()) - 3600)
    with delivering_client(models_dir, redis_url, alertmanager.url) as client:
        push_until(client, "gone-1", series, t0, 0, lambda e: e["state"] == "firing")
        wait_until(
            "the firing alert in Alertmanager",
            lambda: bool(alertmanager.alerts(stream="gone-1")),
            timeout_s=15,
        )
        assert client.delete("/streams/gone-1").status_code == 200
        deleted_at = time.time()

        def resolved() -> list[dict[str, Any]]:
            return [
                a
                for a in hook.alerts()
                if a["labels"]["stream"] == "gone-1"
                and a["status"] == "resolved"
                and "resolution" in a["annotations"]
            ]

        wait_until("the receiver's resolved notification", lambda: bool(resolved()), timeout_s=15)
        # Posted resolved by the re-send after the delete, not left to expire: a firing post says it ends four
        # re-send intervals after it was sent, at least 3 intervals after the delete.
        for alert in resolved():
            assert deleted_at - 1 <= seconds(alert["endsAt"]) <= deleted_at + RESEND_S + 1
            assert "deleted" in alert["annotations"]["resolution"]
        assert not alertmanager.alerts(stream="gone-1")
        assert clean_redis.hlen(f"vigil:notify:firing:{alertmanager.url.removeprefix('http://')}") == 0
        assert metric(client, "vigil_alertmanager_posts_total", kind="gone", outcome="accepted") >= 1


def event_fields(stream_id: str, started_ts: float) -> dict[str, str]:
    """A firing event as the alert tracker writes it to ``vigil:alerts``."""
    return {
        "stream_id": stream_id,
        "model": "tvnet",
        "state": "firing",
        "severity": "critical",
        "ts": repr(started_ts + 5),
        "started_ts": repr(started_ts),
        "peak_score": "9.5",
        "threshold": "1.0",
        "sensors": "s01",
        "escalated": "0",
    }


def test_entries_another_consumer_read_and_left_are_delivered_within_two_leases(
    models_dir: Path,
    redis_url: str,
    clean_redis: Any,
    alertmanager: AlertmanagerProcess,
) -> None:
    """A replica that read entries after its lease lapsed (it paused past it), then stepped down, leaves them in
    its own pending list: the leader, which joined before, takes them over after they idle for ``lease_s``
    (here 3 s) instead of leaving them until the next change of leader."""
    group = f"vigil-notify:{alertmanager.url.removeprefix('http://')}"
    started = float(int(time.time()) - 60)
    with delivering_client(models_dir, redis_url, alertmanager.url) as client:
        wait_until("the leader's group", lambda: metric(client, "vigil_alert_delivery_leader") == 1, 15)
        wait_until(
            "the group",
            lambda: any(g["name"] == group.encode() for g in event_groups(clean_redis)),
            15,
        )
        # Added and read by the stale consumer in one transaction: the leader's blocked read is served after
        # it, and finds nothing new.
        pipe = clean_redis.pipeline(transaction=True)
        pipe.xadd("vigil:alerts", event_fields("stale-1", started))
        pipe.xreadgroup(group, "paused-replica", {"vigil:alerts": ">"}, count=10)
        entry_id, read = pipe.execute()
        assert read[0][1][0][0] == entry_id  # the stale consumer holds it
        left_at = time.monotonic()
        # Accepted by Alertmanager (the stream has no alert state, so the next re-send posts it resolved: its
        # acceptance, not its presence, is what to wait for).
        wait_until("the stale consumer's entry delivered", lambda: delivered(client, alertmanager) == 1, 15)
        # Idle a lease (3 s), then claimed at a check (every lease): about 7 s at most; 12 with slack for load.
        assert time.monotonic() - left_at <= 12
        assert clean_redis.xpending("vigil:alerts", group)["pending"] == 0


def delivered(client: TestClient, alertmanager: AlertmanagerProcess) -> float:
    target = alertmanager.url.removeprefix("http://")
    return metric(client, "vigil_alert_deliveries_total", alertmanager=target, outcome="delivered")


def test_a_follower_whose_lease_was_taken_reads_nothing_until_it_holds_it_again(
    models_dir: Path,
    redis_url: str,
    clean_redis: Any,
    alertmanager: AlertmanagerProcess,
) -> None:
    """The fence before each read: with a lease of 60 s the supervisor renews every 20 s, so for most of that
    time only the follower's own check can keep it from reading once another replica holds the lease (as after
    a pause of this replica past its lease). A read already blocked when the lease was taken still returns what
    arrives within its block (1 s): the entry is added after that."""
    group = f"vigil-notify:{alertmanager.url.removeprefix('http://')}"
    started = float(int(time.time()) - 60)

    def last_read() -> bytes:
        (info,) = [g for g in clean_redis.xinfo_groups("vigil:alerts") if g["name"] == group.encode()]
        return bytes(info["last-delivered-id"])

    with delivering_client(models_dir, redis_url, alertmanager.url, lease_s=60) as client:
        wait_until("the leader", lambda: metric(client, "vigil_alert_delivery_leader") == 1, 15)
        wait_until(
            "the group",
            lambda: any(g["name"] == group.encode() for g in event_groups(clean_redis)),
            15,
        )
        owner = clean_redis.get("vigil:notify:lease")
        clean_redis.set("vigil:notify:lease", "another-replica", px=60_000)
        time.sleep(1.5)  # the read blocked before the lease was taken has returned
        entry_id = clean_redis.xadd("vigil:alerts", event_fields("held-back-1", started))
        time.sleep(1.5)
        assert last_read() < entry_id
        assert delivered(client, alertmanager) == 0
        # The lease back to this replica (as if the other had released it to it): it reads and delivers.
        clean_redis.set("vigil:notify:lease", owner, px=60_000)
        wait_until("the entry delivered", lambda: delivered(client, alertmanager) == 1, 30)
        assert last_read() == entry_id
