"""How an alert event becomes Alertmanager alerts: times, labels, which states post what (pure functions), and
the settings that refuse what Alertmanager would."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from service.alertmanager import (
    Alert,
    EventContext,
    event_alerts,
    event_time_s,
    recorded_s,
    rfc3339,
    target_name,
)
from service.settings import AlertmanagerSettings

RECORDED_MS = 1_780_000_000_123  # 2026-05-28
RECORDED_S = RECORDED_MS / 1000


def event(state: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"{RECORDED_MS}-0",
        "stream_id": "pump 7/a",
        "model": "tvnet",
        "state": state,
        "severity": "warning",
        "ts": 1_779_999_990.0,
        "started_ts": 1_779_999_900.0,
        "peak_score": 12.5,
        "threshold": 3.0,
        "sensors": ["s1", "s2"],
        "escalated": False,
        **fields,
    }


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (1_779_999_990.0, 1_779_999_990.0),  # epoch seconds
        (1_779_999_990_500.0, 1_779_999_990.5),  # milliseconds
        (1_779_999_990_500_000.0, 1_779_999_990.5),  # microseconds
        (1.7799999905e18, 1_779_999_990.5),  # nanoseconds
        (42.0, RECORDED_S),  # a row index: when Vigil recorded the event
        (-5.0, RECORDED_S),
        (RECORDED_S + 7200, RECORDED_S),  # two hours in the future: not a clock
        (float("inf"), RECORDED_S),
        (900_000_000.0, RECORDED_S),  # 1998: before 2000, read as no clock (seconds) … nor as ms
    ],
)
def test_event_time_reads_plausible_epochs_and_falls_back_to_the_recording_time(
    ts: float, expected: float
) -> None:
    assert event_time_s(ts, RECORDED_S) == pytest.approx(expected, abs=1e-3)


def test_rfc3339_and_recorded_time_of_an_entry_id() -> None:
    assert recorded_s("1780000000123-4") == RECORDED_S
    assert rfc3339(RECORDED_S) == "2026-05-28T20:26:40.123Z"


def test_pending_and_cancelled_post_nothing() -> None:
    context = EventContext("v1")
    assert event_alerts(event("pending"), context, {}, "http://v") == []
    assert event_alerts(event("cancelled"), context, {}, "http://v") == []


def test_firing_posts_the_alert_from_the_lifecycle_start_with_labels_and_a_link() -> None:
    (alert,) = event_alerts(
        event("firing"), EventContext("v1", (("s1", 0.6), ("s2", 0.25))), {"env": "prod"}, "https://x"
    )
    assert alert.labels == {
        "env": "prod",
        "alertname": "VigilAnomaly",
        "stream": "pump 7/a",
        "model": "tvnet",
        "severity": "warning",
    }
    assert alert.firing and alert.starts_s == 1_779_999_900.0
    assert alert.generator_url == "https://x/ui?stream=pump%207%2Fa"
    assert alert.annotations["top_sensors"] == "s1=0.6000,s2=0.2500"
    assert "s1 (60%), s2 (25%)" in alert.annotations["description"]
    assert alert.annotations["model_version"] == "v1" and alert.annotations["event_id"] == f"{RECORDED_MS}-0"
    payload = alert.payload(now_s=RECORDED_S, resend_interval_s=60)
    assert payload["startsAt"] == rfc3339(1_779_999_900.0)
    assert payload["endsAt"] == rfc3339(RECORDED_S + 240)  # four re-send intervals: Prometheus's rule


def test_resolved_posts_the_alert_ended_at_the_event() -> None:
    (alert,) = event_alerts(event("resolved", severity="critical"), EventContext("v1"), {}, "http://v")
    assert not alert.firing and alert.labels["severity"] == "critical"
    payload = alert.payload(now_s=RECORDED_S + 999, resend_interval_s=60)
    assert (payload["startsAt"], payload["endsAt"]) == (rfc3339(1_779_999_900.0), rfc3339(1_779_999_990.0))
    assert alert.annotations["top_sensors"] == "s1,s2"  # no shares known: the names alone
    assert "resolved" in alert.annotations["summary"]


def test_escalation_resolves_the_warning_alert_and_fires_the_critical_one() -> None:
    warning, critical = event_alerts(
        event("firing", severity="critical", escalated=True), EventContext("v1"), {}, "http://v"
    )
    assert (warning.labels["severity"], warning.firing, warning.ends_s) == ("warning", False, 1_779_999_990.0)
    assert (critical.labels["severity"], critical.firing, critical.starts_s) == (
        "critical",
        True,
        1_779_999_900.0,
    )


def test_client_timestamps_that_are_no_clock_use_the_recording_time_and_never_end_before_they_start() -> None:
    (alert,) = event_alerts(event("resolved", ts=130.0, started_ts=100.0), EventContext(""), {}, "http://v")
    payload = alert.payload(now_s=RECORDED_S, resend_interval_s=60)
    assert payload["startsAt"] == payload["endsAt"] == rfc3339(RECORDED_S)


def test_alert_survives_its_redis_encoding() -> None:
    (alert,) = event_alerts(event("firing"), EventContext("v1", (("s1", 0.5),)), {"a": "b"}, "http://v")
    assert Alert.loads(alert.dumps()) == alert


def test_target_name_leaves_credentials_out() -> None:
    assert target_name("https://user:secret@am.example.com:9093/prefix") == "am.example.com:9093/prefix"


@pytest.mark.parametrize(
    "settings",
    [
        {"urls": ["alertmanager:9093"]},
        {"urls": ["http://am:9093", "https://user:pw@am:9093/"]},  # one Alertmanager twice
        {"labels": {"severity": "page"}},
        {"labels": {"bad-name": "x"}},
        {"labels": {"__reserved": "x"}},
    ],
)
def test_settings_refuse_what_alertmanager_would(settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AlertmanagerSettings(**settings)


def test_settings_read_urls_and_labels_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    monkeypatch.setenv("VIGIL_AUTH_DISABLED", "true")
    monkeypatch.setenv("VIGIL_ALERTMANAGER__URLS", '["http://am-1:9093/", "http://am-2:9093"]')
    monkeypatch.setenv("VIGIL_ALERTMANAGER__LABELS", '{"env": "prod"}')
    monkeypatch.setenv("VIGIL_PUBLIC_URL", "https://vigil.example.com")
    settings = Settings()
    assert settings.alertmanager.urls == ["http://am-1:9093", "http://am-2:9093"]
    assert settings.alertmanager.labels == {"env": "prod"}
    assert settings.public_url == "https://vigil.example.com"
