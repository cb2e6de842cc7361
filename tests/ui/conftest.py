"""The live view's API tests use the service tests' app fixtures (a TestClient on ``create_app``)."""

from __future__ import annotations

from tests.service.conftest import client, settings, test_series

__all__ = ["client", "settings", "test_series"]
