"""Start-up's objects are frozen out of the garbage collector's full walks (service/gcpolicy.py)."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.service.conftest import auth


def test_start_up_objects_are_frozen_so_a_full_collection_walks_only_what_requests_made(
    settings: Settings,
) -> None:
    gc.unfreeze()
    try:
        frozen_app = create_app(settings.model_copy(update={"gc_freeze": True}))
        with TestClient(create_app(settings), headers=auth("all")):
            assert gc.get_freeze_count() == 0  # VIGIL_GC_FREEZE=false: nothing frozen
        with TestClient(frozen_app, headers=auth("all")) as client:
            frozen = gc.get_freeze_count()
            assert client.get("/models").status_code == 200
            walked = len(gc.get_objects())  # what a full collection walks: the frozen are not among them
            assert frozen > 2 * walked, (frozen, walked)
    finally:
        gc.unfreeze()  # the test process goes on: let its collections see these objects again
