"""An in-process app whose poller the test drives one step at a time (``_poll``, ``_attempt``) through the app's
own event loop, with a lease the test holds: the app's background poller stands by while another owner holds it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from anyio.from_thread import BlockingPortal
from fastapi.testclient import TestClient

from models.manifest import Manifest
from models.prometheus import PrometheusClient
from service.app import create_app
from service.lease import Lease
from service.poller import SourcePoller, SourceStatus, lease_key
from tests.service.conftest import auth, make_settings
from tests.sources.conftest import SMDBundles

MODEL = "smd"  # the source-backed bundle of ``smd_bundles.models_dir``


@dataclass
class PollerSteps:
    app: TestClient
    poller: SourcePoller
    portal: BlockingPortal
    prometheus_url: str

    def poll(self, owner: str, manifest: Manifest | None = None, status: SourceStatus | None = None) -> None:
        """One ``_poll`` as the holder ``owner`` (raises what it raises)."""

        async def run() -> None:
            client = PrometheusClient(self.prometheus_url, 10)
            try:
                lease = Lease(self.poller._redis, lease_key(MODEL), owner, 60)
                chosen = manifest or self.poller._models.get(MODEL).manifest
                await self.poller._poll(
                    MODEL, chosen, client, status or SourceStatus(self.prometheus_url), lease
                )
            finally:
                client.close()

        self.portal.call(run)

    def attempt(self, owner: str, status: SourceStatus) -> float:
        """One ``_attempt`` (a poll with its failure handling) as ``owner``; returns the wait it chose."""

        async def run() -> float:
            client = PrometheusClient(self.prometheus_url, 5)
            try:
                lease = Lease(self.poller._redis, lease_key(MODEL), owner, 60)
                return await self.poller._attempt(MODEL, client, status, lease)
            finally:
                client.close()

        return self.portal.call(run)

    def metric(self, name: str, **labels: str) -> float:
        for line in self.app.get("/metrics").text.splitlines():
            if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no sample of {name} with {labels}")


@contextmanager
def poller_steps(
    bundles: SMDBundles, redis_url: str, prometheus_url: str, start_at: float, clock: dict[str, float]
) -> Iterator[PollerSteps]:
    """The app polling ``prometheus_url`` from ``start_at`` on the shifted ``clock`` (the caller holds the lease
    under another owner first, so that the app's own poller stands by)."""
    settings = make_settings(
        bundles.models_dir,
        redis_url,
        sources={
            "prometheus_url": prometheus_url,
            "start_at": start_at,
            "settle_s": 0,
            "catch_up_s": 86_400,
            "clock": clock,
        },
    )
    with TestClient(create_app(settings), headers=auth("all")) as app:
        portal = app.portal
        assert portal is not None
        yield PollerSteps(app, app.app.state.sources, portal, prometheus_url)  # type: ignore[attr-defined]
