"""Loaded model bundles by name, each with its ONNX engine and micro-batcher; hot reload by lease.

A request leases the handle it started with for its whole life; a reload swaps in the new version for new
requests, waits until the old handle has no lease left, then drains and stops its batcher. So in-flight
requests finish on the old session and none fails.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.lifecycle import LevelThresholds
from models.manifest import MANIFEST_FILE, BundleError, Manifest, find_bundles, find_versions
from models.scoring import F32, WindowScores, score_windows
from service.batcher import MicroBatcher, ScoreFn
from service.engine import ONNXEngine
from service.errors import ModelMismatch, UnknownModel
from service.inference_client import InferenceConnection, RemoteBatcher
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ModelHandle:
    engine: ONNXEngine
    batcher: MicroBatcher | RemoteBatcher
    levels: LevelThresholds  # the calibrated thresholds and the alert policy in effect for this model
    leases: int = field(default=0)

    @property
    def manifest(self) -> Manifest:
        return self.engine.manifest

    @property
    def name(self) -> str:
        return self.engine.manifest.name

    def summary(self) -> dict[str, Any]:
        m = self.manifest
        return {
            "name": m.name,
            "version": m.version,
            "architecture": m.architecture,
            "window_length": m.window_length,
            "stride": m.stride,
            "n_features": m.n_features,
            "provider": self.engine.provider,
        }


def scoring_function(engine: ONNXEngine) -> ScoreFn:
    definition = engine.manifest.score

    def score(windows: F32) -> WindowScores:
        return score_windows(windows, engine.run(windows), definition)

    return score


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        # Shared inference: this process's connection to the inference process, for every model.
        self._connection: InferenceConnection | None = None
        if settings.inference == "shared":
            if settings.inference_socket is None:
                raise BundleError(
                    "VIGIL_INFERENCE=shared needs the inference process's socket (vigil serve sets it)"
                )
            self._connection = InferenceConnection(settings.inference_socket)
        self._models: dict[str, ModelHandle] = {}
        self._reload_lock = asyncio.Lock()
        self._refused: dict[tuple[str, str], Path] = {}  # (model, version) named in the gauge -> its folder

    @property
    def models_dir(self) -> Path:
        return self._settings.models_dir

    def load_all(self) -> None:
        """Load the version of every model under ``models_dir`` that :meth:`_served_at_start` names; fail fast on
        a bad one."""
        found = find_versions(self._settings.models_dir)
        if not found:
            raise BundleError(f"no model bundles under {self._settings.models_dir}")
        for name, versions in found.items():
            self._models[name] = self._open(self._served_at_start(name, versions))

    def _served_at_start(self, name: str, versions: list[Path]) -> Path:
        """The newest version that keeps the window and sensors of the model's oldest readable version on disk:
        what a chain of reloads would serve, each refusing (409) a version that changes them, since streams keep
        their windows in Redis across versions and a restart must not serve what a reload refused. Every version
        that changes them is logged and named in ``vigil_model_version_refused``; an older version whose manifest
        cannot be read is left out with a warning; the newest one must be readable, as before."""
        manifests: dict[Path, Manifest] = {}
        for path in versions[:-1]:
            try:
                manifests[path] = Manifest.load(path)
            except BundleError as exc:
                log.warning("model %s: version %s left out at start: %s", name, path.name, exc)
        manifests[versions[-1]] = Manifest.load(versions[-1])
        anchor = next(iter(manifests.values()))
        kept = []
        for path, manifest in manifests.items():
            try:
                self._check_compatible(anchor, manifest)
            except ModelMismatch as exc:
                self._refuse(name, manifest.version, path, exc)
                continue
            kept.append(path)
        return kept[-1]  # the anchor itself is always kept

    def _refuse(self, name: str, version: str, path: Path, exc: ModelMismatch) -> None:
        log.error("model %s: version %s not served: %s", name, version, exc.detail)
        self._metrics.model_version_refused.labels(name, version).set(1)
        self._refused[(name, version)] = path

    def _forget_removed(self) -> None:
        """Take out of ``vigil_model_version_refused`` the versions no longer on disk (the operator removed
        them, as the reload's 409 asks), so the gauge does not stay up until the next restart."""
        for (name, version), path in list(self._refused.items()):
            if not (path / MANIFEST_FILE).is_file():
                self._metrics.model_version_refused.remove(name, version)
                del self._refused[(name, version)]

    def _open(self, path: Path) -> ModelHandle:
        s = self._settings
        shared = self._connection is not None
        # With shared inference this process keeps a CPU session only for the manifest and the live view's
        # window route; scoring goes to the inference process.
        engine = ONNXEngine.open(
            path, "cpu" if shared else s.provider, 1 if shared else s.intra_op_threads, s.intra_op_spinning
        )
        manifest = engine.manifest
        try:
            policy = s.alert_policy_for(manifest)
            levels = LevelThresholds(
                manifest.thresholds.warning,
                manifest.thresholds.critical,
                policy,
                manifest.thresholds.baseline,
            )
        except ValueError as exc:
            raise BundleError(f"{path}: alert policy: {exc}") from exc
        engine.warm_up()
        m = self._metrics
        name, provider = engine.manifest.name, engine.provider

        def observe(count: int, wait_s: float, infer_s: float) -> None:
            m.batch_size.labels(name).observe(count)
            m.queue_wait.labels(name).observe(wait_s)
            m.inference.labels(name, provider).observe(infer_s)

        def count_restart() -> None:
            m.worker_restarts.labels(name).inc()

        batching = s.batching
        batcher: MicroBatcher | RemoteBatcher
        if self._connection is not None:
            batcher = RemoteBatcher(name, self._connection, batching.queue_capacity)
            m.initialise_model(name, provider)
            return ModelHandle(engine=engine, batcher=batcher, levels=levels)
        batcher = MicroBatcher(
            name,
            scoring_function(engine),
            batching.max_batch_size,
            batching.max_wait_ms,
            batching.queue_capacity,
            observe,
            count_restart,
            max_queue_wait_ms=batching.max_queue_wait_ms or None,
            max_queue_delay_ms=batching.max_queue_delay_ms or None,
        )
        batcher.start()
        m.initialise_model(name, provider)
        m.model_info.labels(name, engine.manifest.version, engine.manifest.architecture, provider).set(1)
        return ModelHandle(engine=engine, batcher=batcher, levels=levels)

    def get(self, name: str | None) -> ModelHandle:
        if name is None:
            if len(self._models) == 1:
                return next(iter(self._models.values()))
            raise UnknownModel(f"several models are loaded ({sorted(self._models)}); name one in 'model'")
        try:
            return self._models[name]
        except KeyError as exc:
            raise UnknownModel(f"unknown model {name!r}; loaded: {sorted(self._models)}") from exc

    @contextmanager
    def lease(self, name: str | None) -> Iterator[ModelHandle]:
        handle = self.get(name)
        handle.leases += 1
        try:
            yield handle
        finally:
            handle.leases -= 1

    def all(self) -> list[ModelHandle]:
        return list(self._models.values())

    async def reload(self, only: str | None = None, drain_timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Swap in the latest bundle version of each model (or of ``only``); returns what changed."""
        async with self._reload_lock:
            self._forget_removed()
            bundles = find_bundles(self._settings.models_dir)
            if only is not None and only not in bundles:
                raise UnknownModel(f"no bundle named {only!r} under {self._settings.models_dir}")
            changes = []
            for name, path in bundles.items():
                if only is not None and name != only:
                    continue
                old = self._models.get(name)
                incoming = Manifest.load(path)
                if old is not None and incoming.version == old.manifest.version:
                    changes.append({"name": name, "version": old.manifest.version, "changed": False})
                    continue
                if old is not None:
                    try:
                        self._check_compatible(old.manifest, incoming)
                    except ModelMismatch as exc:
                        self._refuse(name, incoming.version, path, exc)
                        raise
                new = await asyncio.to_thread(self._open, path)
                self._models[name] = new
                if old is not None:
                    await self._retire(old, drain_timeout_s)
                    self._metrics.model_info.labels(
                        name, old.manifest.version, old.manifest.architecture, old.engine.provider
                    ).set(0)
                log.info("model %s now serves version %s", name, new.manifest.version)
                changes.append({"name": name, "version": new.manifest.version, "changed": True})
            return changes

    @staticmethod
    def _check_compatible(old: Manifest, new: Manifest) -> None:
        """Streams keep their windows across versions, so the window geometry must not change, nor what each
        column of the window is: the sensors (their names, and for a source-backed model its queries, label
        and step)."""
        for attr in ("window_length", "stride", "n_features"):
            if getattr(old, attr) != getattr(new, attr):
                raise ModelMismatch(
                    f"new version of {old.name!r} changes {attr} ({getattr(old, attr)} → {getattr(new, attr)}); "
                    "serve it under a new model name"
                )
        if old.feature_names != new.feature_names:
            changed = [
                f"{a} → {b}" for a, b in zip(old.feature_names, new.feature_names, strict=True) if a != b
            ]
            raise ModelMismatch(
                f"new version of {old.name!r} changes its sensors ({', '.join(changed[:3])}); "
                "serve it under a new model name"
            )
        if (old.source is None) != (new.source is None) or (
            old.source is not None and new.source is not None and not old.source.same_sensors(new.source)
        ):
            raise ModelMismatch(
                f"new version of {old.name!r} reads its sensors from another source (queries, label or step "
                "differ); serve it under a new model name"
            )

    async def _retire(self, handle: ModelHandle, timeout_s: float) -> None:
        waited = 0.0
        while handle.leases > 0 and waited < timeout_s:
            await asyncio.sleep(0.01)
            waited += 0.01
        await asyncio.to_thread(handle.batcher.stop)

    def close(self) -> None:
        for handle in self._models.values():
            handle.batcher.stop()
