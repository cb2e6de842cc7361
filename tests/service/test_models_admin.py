"""GET /models, /models/{name}, and hot reload with no failed request."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import Metrics
from service.redis_clients import redis_client
from service.registry import ModelRegistry
from service.reloads import GENERATION_KEY, current, follow, generation_before_load
from service.tasks import stop_task
from tests.service.conftest import auth, make_settings, points_body


def test_models_list_and_summary(client: TestClient) -> None:
    listed = client.get("/models").json()
    assert [m["name"] for m in listed] == ["tvnet"]
    summary = client.get("/models/tvnet").json()
    assert summary["window_length"] == 100 and summary["stride"] == 10 and summary["n_features"] == 38
    assert summary["thresholds"]["critical"] >= summary["thresholds"]["warning"]
    assert summary["parity"]["passed"] is True
    assert len(summary["feature_names"]) == 38
    assert client.get("/models/nope").status_code == 404


def new_version(models: Path, source: Path, version: str, **changes: object) -> Path:
    """A copy of a bundle under a new version (the same graph, so its sha256 still matches)."""
    target = models / "tvnet" / version
    shutil.copytree(source, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update(version=version, **changes)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_hot_reload_under_load_fails_no_request(
    bundle_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path, test_series: np.ndarray
) -> None:
    models = tmp_path / "models"
    first = new_version(models, bundle_dir, "a")
    settings = make_settings(models, redis_url)
    statuses: list[int] = []
    versions: list[str] = []
    stop = threading.Event()
    with TestClient(create_app(settings), headers=auth("all")) as client:

        def load(stream_id: str) -> None:
            offset = 0
            while not stop.is_set() and offset < 590:
                response = client.post(
                    "/score", json=points_body(stream_id, test_series[offset : offset + 10], offset)
                )
                statuses.append(response.status_code)
                versions.append(response.json().get("version", "?"))
                offset += 10

        threads = [threading.Thread(target=load, args=(f"reload-{i}",)) for i in range(3)]
        for thread in threads:
            thread.start()
        while len(statuses) < 30:
            threading.Event().wait(0.01)
        new_version(models, first, "b")
        reloaded = client.post("/admin/models/reload").json()
        assert reloaded == {"models": [{"name": "tvnet", "version": "b", "changed": True}]}
        stop.set()
        for thread in threads:
            thread.join()
        assert client.get("/models").json()[0]["version"] == "b"
        again = client.post("/admin/models/reload").json()["models"]
        assert again == [{"name": "tvnet", "version": "b", "changed": False}]
    assert statuses and set(statuses) == {200}
    assert versions[0] == "a" and versions[-1] == "b"


def test_reload_refuses_a_version_that_changes_the_window(
    bundle_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    first = new_version(models, bundle_dir, "a")
    with TestClient(create_app(make_settings(models, redis_url)), headers=auth("all")) as client:
        new_version(models, first, "b", stride=5)
        response = client.post("/admin/models/reload")
        assert response.status_code == 409 and "stride" in response.json()["detail"]
        assert client.get("/models").json()[0]["version"] == "a"


def test_a_restart_serves_the_newest_version_that_keeps_the_window(
    bundle_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """A version the reload refused (another stride) left on disk beside the served one: a restart serves the
    newest version that keeps the oldest one's window ("c", not "b"; then "c", not "d"), names each refused
    version in a gauge (until it is removed and a reload runs), and a reload still refuses it. Before, a restart
    served "d", whose stride the streams' stored windows do not have. An older version whose manifest cannot be
    read is left out, not fatal."""
    models = tmp_path / "models"
    first = new_version(models, bundle_dir, "a")
    new_version(models, first, "b", stride=5)
    new_version(models, first, "c")
    (models / "tvnet" / "0-partial").mkdir()
    (models / "tvnet" / "0-partial" / "manifest.json").write_text("{")
    metrics = Metrics()
    registry = ModelRegistry(make_settings(models, redis_url), metrics)
    registry.load_all()
    try:
        assert registry.get("tvnet").manifest.version == "c"
        refused = metrics.registry.get_sample_value
        assert refused("vigil_model_version_refused", {"model": "tvnet", "version": "b"}) == 1
        assert refused("vigil_model_version_refused", {"model": "tvnet", "version": "c"}) is None
        # Removed, as the 409 asks: the next reload takes it off the gauge.
        shutil.rmtree(models / "tvnet" / "b")
        asyncio.run(registry.reload())
        assert refused("vigil_model_version_refused", {"model": "tvnet", "version": "b"}) is None
    finally:
        registry.close()
    (models / "tvnet" / "d").mkdir()
    shutil.copytree(first, models / "tvnet" / "d", dirs_exist_ok=True)
    manifest = json.loads((models / "tvnet" / "d" / "manifest.json").read_text())
    (models / "tvnet" / "d" / "manifest.json").write_text(
        json.dumps({**manifest, "version": "d", "stride": 5})
    )
    with TestClient(create_app(make_settings(models, redis_url)), headers=auth("all")) as client:
        assert client.get("/models").json()[0]["version"] == "c"
        response = client.post("/admin/models/reload")
        assert response.status_code == 409 and "stride" in response.json()["detail"]
        assert client.get("/models").json()[0]["version"] == "c"


def test_a_bundle_whose_manifest_and_graph_disagree_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    from models.manifest import BundleError
    from models.runtime import load_bundle

    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["n_features"] = 37
    manifest["feature_names"] = manifest["feature_names"][:37]
    manifest["normalisation"] = {k: v[:37] for k, v in manifest["normalisation"].items()}
    if manifest["score"].get("level"):  # the default score's level term has one entry per sensor too
        manifest["score"]["level"] = {
            k: v[:37] if isinstance(v, list) else v for k, v in manifest["score"]["level"].items()
        }
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="shape"):
        load_bundle(broken)
    (broken / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(broken)


def sourced_version(models: Path, base: Path, version: str, **changes: object) -> Path:
    """``new_version`` with the manifest's ``source`` (or another field) set to what ``changes`` says."""
    target = new_version(models, base, version)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest.update(changes)
    (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_reload_refuses_a_version_whose_sensors_differ(
    bundle_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """The same window, other columns: renamed sensors, or (source-backed) other queries, label or step."""
    models = tmp_path / "models"
    names = json.loads((bundle_dir / "manifest.json").read_text())["feature_names"]
    queries = [{"name": n, "expr": f'node_metric{{sensor="{n}"}}'} for n in names]
    source = {"queries": queries, "by": "instance", "step_s": 60.0}
    first = sourced_version(models, bundle_dir, "a", source=source)
    with TestClient(create_app(make_settings(models, redis_url)), headers=auth("all")) as client:
        sourced_version(models, first, "b", feature_names=["renamed", *names[1:]], source=None)
        response = client.post("/admin/models/reload")
        assert response.status_code == 409 and "changes its sensors" in response.json()["detail"]
        shutil.rmtree(models / "tvnet" / "b")
        other = [{**queries[0], "expr": "other_metric"}, *queries[1:]]
        for version, changed in (("c", {"queries": other}), ("d", {"step_s": 30.0}), ("e", {"by": "host"})):
            sourced_version(models, first, version, source={**source, **changed})
            response = client.post("/admin/models/reload")
            assert response.status_code == 409 and "another source" in response.json()["detail"], version
            shutil.rmtree(models / "tvnet" / version)
        sourced_version(models, first, "f", source={**source, "gap": {"max_fill_steps": 2}})  # same sensors
        assert client.post("/admin/models/reload").json()["models"][0] == {
            "name": "tvnet",
            "version": "f",
            "changed": True,
        }


def test_a_reload_answered_by_one_replica_reaches_the_others(
    bundle_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """Two processes on one Redis and one models folder (two workers, or two replicas): the reload one of them
    answers reaches the other within seconds (it reached only the one that answered it: with two workers a
    third of the requests still got the old version, found by a review)."""
    models = tmp_path / "models"
    first = new_version(models, bundle_dir, "a")
    settings = make_settings(models, redis_url)
    with (
        TestClient(create_app(settings), headers=auth("all")) as one,
        TestClient(create_app(settings), headers=auth("all")) as other,
    ):
        new_version(models, first, "b")
        assert one.post("/admin/models/reload").json()["models"][0]["version"] == "b"
        deadline = time.monotonic() + 10
        while other.get("/models").json()[0]["version"] != "b":
            assert time.monotonic() < deadline, "the other process never reloaded"
            time.sleep(0.2)
        window = {"window": np.zeros((100, 38)).tolist()}
        assert other.post("/score", json=window).json()["version"] == "b"


def test_a_reload_elsewhere_of_a_version_not_here_yet_is_waited_for(
    bundle_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """Two replicas, each with its own copy of the models folder: one gets version "b" and reloads; the other's
    copy has not synced yet when it sees the announcement. It keeps serving "a", looks again, and serves "b"
    once its copy has it whole (a folder copied before its manifest names "b" is not). Before, it took the
    announcement as seen, found nothing new, and served "a" until the next reload."""
    here, there = tmp_path / "here", tmp_path / "there"
    new_version(here, bundle_dir, "a")
    new_version(there, bundle_dir, "a")
    settings = make_settings(there, redis_url)
    with (
        TestClient(create_app(make_settings(here, redis_url)), headers=auth("all")) as one,
        TestClient(create_app(settings), headers=auth("all")) as other,
    ):
        new_version(here, here / "tvnet" / "a", "b")
        assert one.post("/admin/models/reload").json()["models"][0]["version"] == "b"
        assert clean_redis.hget("vigil:models:announced", "tvnet") == b"b"
        time.sleep(2.0)  # the other replica has seen the announcement (it looks every second)
        assert other.get("/models").json()[0]["version"] == "a"
        new_version(there, there / "tvnet" / "a", "b")  # its copy catches up
        deadline = time.monotonic() + 10
        while other.get("/models").json()[0]["version"] != "b":
            assert time.monotonic() < deadline, "the other replica never served the announced version"
            time.sleep(0.2)


def test_a_reload_of_a_bundle_still_being_copied_is_retried_until_it_is_whole(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """A reload announced while this process's copy of the new version is incomplete (its manifest half
    written): the follower logs it, keeps the served version and tries again, and serves the new version once
    the copy is whole. Before, the error ended the follower: every later reload was missed for good."""
    served = tmp_path / "models"
    shutil.copytree(models_dir, served)
    settings = make_settings(served, redis_url)
    registry = ModelRegistry(settings, Metrics())
    registry.load_all()
    staged = served / "tvnet" / "v2"

    async def run() -> list[str]:
        client = redis_client(settings)
        try:
            follower = asyncio.create_task(
                follow(client, registry, await current(client), interval_s=0.05, max_backoff_s=0.2)
            )
            staged.mkdir()
            (staged / "manifest.json").write_text("{")  # the copy has begun
            await client.incr(GENERATION_KEY)
            await asyncio.sleep(1.0)
            seen = [registry.get("tvnet").manifest.version, f"follower done: {follower.done()}"]
            shutil.rmtree(staged)
            shutil.copytree(served / "tvnet" / "test", staged)
            manifest = json.loads((staged / "manifest.json").read_text())
            (staged / "manifest.json").write_text(json.dumps({**manifest, "version": "v2"}))
            for _ in range(100):
                if registry.get("tvnet").manifest.version == "v2":
                    break
                await asyncio.sleep(0.05)
            seen.append(registry.get("tvnet").manifest.version)
            await stop_task(follower, 2.0, "model reloads")
            return seen
        finally:
            await client.aclose()

    assert asyncio.run(run()) == ["test", "follower done: False", "v2"]


def test_a_reload_announced_while_the_process_loads_is_not_missed(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """The follower starts from the generation read before the models were loaded: a reload announced in
    between (another replica's, while this one started) is acted on, not taken as the starting point."""
    served = tmp_path / "models"
    shutil.copytree(models_dir, served)
    settings = make_settings(served, redis_url)
    registry = ModelRegistry(settings, Metrics())

    async def run() -> str:
        client = redis_client(settings)
        try:
            before = await generation_before_load(client)
            registry.load_all()  # serves "test"
            staged = served / "tvnet" / "v2"
            shutil.copytree(served / "tvnet" / "test", staged)
            manifest = json.loads((staged / "manifest.json").read_text())
            (staged / "manifest.json").write_text(json.dumps({**manifest, "version": "v2"}))
            await client.incr(GENERATION_KEY)  # announced by a replica that reloaded meanwhile
            follower = asyncio.create_task(follow(client, registry, before, interval_s=0.05))
            for _ in range(100):
                if registry.get("tvnet").manifest.version == "v2":
                    break
                await asyncio.sleep(0.05)
            await stop_task(follower, 2.0, "model reloads")
            return registry.get("tvnet").manifest.version
        finally:
            await client.aclose()

    assert asyncio.run(run()) == "v2"


def stage_version(model_dir: Path, version: str, **changes: object) -> None:
    """A copy of the model's "test" bundle as ``version``, its manifest changed by ``changes``."""
    staged = model_dir / version
    shutil.copytree(model_dir / "test", staged)
    manifest = json.loads((staged / "manifest.json").read_text())
    (staged / "manifest.json").write_text(json.dumps({**manifest, "version": version, **changes}))


def test_a_version_refused_here_does_not_hold_back_the_other_models(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """Model "alpha" has a staged version this process refuses (another stride), model "tvnet" a good one: a
    reload announced elsewhere serves tvnet's and keeps alpha's current version. Before, the refusal of alpha,
    which comes first, ended the reload and tvnet's new version was never served here."""
    served = tmp_path / "models"
    shutil.copytree(models_dir / "tvnet", served / "tvnet")
    shutil.copytree(models_dir / "tvnet", served / "alpha")
    alpha = json.loads((served / "alpha" / "test" / "manifest.json").read_text())
    (served / "alpha" / "test" / "manifest.json").write_text(json.dumps({**alpha, "name": "alpha"}))
    settings = make_settings(served, redis_url)
    registry = ModelRegistry(settings, Metrics())
    registry.load_all()
    stage_version(served / "alpha", "v2", name="alpha", stride=alpha["stride"] + 1)
    stage_version(served / "tvnet", "v2")

    async def run() -> tuple[str, str]:
        client = redis_client(settings)
        try:
            follower = asyncio.create_task(follow(client, registry, await current(client), interval_s=0.05))
            await client.incr(GENERATION_KEY)
            for _ in range(100):
                if registry.get("tvnet").manifest.version == "v2":
                    break
                await asyncio.sleep(0.05)
            await stop_task(follower, 2.0, "model reloads")
            return registry.get("alpha").manifest.version, registry.get("tvnet").manifest.version
        finally:
            await client.aclose()

    assert asyncio.run(run()) == ("test", "v2")


def test_an_announced_version_that_never_arrives_holds_back_no_later_reload(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """An announcement this folder never gets (the version was deleted elsewhere after its reload) is awaited
    on its own: the next reload, of a version this folder has, is served at the follower's next turn, not
    after a backoff."""
    served = tmp_path / "models"
    shutil.copytree(models_dir, served)
    settings = make_settings(served, redis_url)
    registry = ModelRegistry(settings, Metrics())
    registry.load_all()

    async def run() -> float:
        client = redis_client(settings)
        try:
            follower = asyncio.create_task(follow(client, registry, await current(client), interval_s=0.05))
            await client.hset("vigil:models:announced", "tvnet", "zz-deleted")
            await client.incr(GENERATION_KEY)
            await asyncio.sleep(4.0)  # a follower backing off would now wait 3.2 s (0.1, 0.2, ... doubling)
            stage_version(served / "tvnet", "v2")
            await client.incr(GENERATION_KEY)
            began = time.monotonic()
            while registry.get("tvnet").manifest.version != "v2" and time.monotonic() - began < 10:
                await asyncio.sleep(0.02)
            took = time.monotonic() - began
            await stop_task(follower, 2.0, "model reloads")
            return took
        finally:
            await client.aclose()
            registry.close()

    assert asyncio.run(run()) < 1.5  # a turn is 0.05 s; the backoff's next try would come 2.3 s after
