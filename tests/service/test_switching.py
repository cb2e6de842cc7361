"""The interpreter's switch interval is the one configured (service/switching.py), in the API process and in
the shared inference process; a value out of range is refused at start with the setting's name."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import auth


@pytest.fixture
def restored_interval() -> Iterator[float]:
    before = sys.getswitchinterval()
    sys.setswitchinterval(0.005)
    try:
        yield before
    finally:
        sys.setswitchinterval(before)


@pytest.mark.parametrize("interval_ms", [0.25, 2.0])
def test_the_app_sets_the_configured_switch_interval_at_start(
    settings: Settings, restored_interval: float, interval_ms: float
) -> None:
    app = create_app(settings.model_copy(update={"switch_interval_ms": interval_ms}))
    assert sys.getswitchinterval() == pytest.approx(0.005)  # nothing changes before start-up
    with TestClient(app, headers=auth("all")) as client:
        assert sys.getswitchinterval() == pytest.approx(interval_ms / 1000)
        assert client.get("/models").status_code == 200


def test_none_leaves_the_interpreters_interval(settings: Settings, restored_interval: float) -> None:
    with TestClient(create_app(settings.model_copy(update={"switch_interval_ms": None})), headers=auth("all")):
        assert sys.getswitchinterval() == pytest.approx(0.005)


@pytest.mark.parametrize("value", ["0", "-1", "101", "fast"])
def test_an_out_of_range_interval_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("VIGIL_SWITCH_INTERVAL_MS", value)
    with pytest.raises(ValidationError, match="switch_interval_ms"):
        Settings()
