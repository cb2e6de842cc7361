"""Loaded model bundles by name: each with its ONNX engine and its micro-batcher."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from models.manifest import BundleError, Manifest, find_bundles
from models.scoring import F32, WindowScores, score_windows
from service.batcher import MicroBatcher
from service.engine import ONNXEngine
from service.errors import UnknownModel
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ModelHandle:
    engine: ONNXEngine
    batcher: MicroBatcher

    @property
    def manifest(self) -> Manifest:
        return self.engine.manifest

    @property
    def name(self) -> str:
        return self.engine.manifest.name


def _scorer(engine: ONNXEngine):  # type: ignore[no-untyped-def]
    definition = engine.manifest.score

    def score(windows: F32) -> WindowScores:
        return score_windows(windows, engine.run(windows), definition)

    return score


class ModelRegistry:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._models: dict[str, ModelHandle] = {}

    def load_all(self) -> None:
        """Load the latest version of every bundle under ``models_dir``; fail fast on a bad one."""
        bundles = find_bundles(self._settings.models_dir)
        if not bundles:
            raise BundleError(f"no model bundles under {self._settings.models_dir}")
        for name, path in bundles.items():
            self._models[name] = self._open(path)

    def _open(self, path: Path) -> ModelHandle:
        s = self._settings
        engine = ONNXEngine.open(path, s.provider, s.intra_op_threads)
        engine.warm_up()
        m = self._metrics
        name = engine.manifest.name

        def observe(count: int, wait_s: float, infer_s: float) -> None:
            m.batch_size.labels(name).observe(count)
            m.queue_wait.labels(name).observe(wait_s)
            m.inference.labels(name, engine.provider).observe(infer_s)

        batcher = MicroBatcher(
            name, _scorer(engine), s.batching.max_batch_size, s.batching.max_wait_ms, s.batching.queue_capacity,
            observe,
        )
        batcher.start()
        m.model_info.labels(name, engine.manifest.version, engine.manifest.architecture, engine.provider).set(1)
        return ModelHandle(engine=engine, batcher=batcher)

    def get(self, name: str | None) -> ModelHandle:
        if name is None:
            if len(self._models) == 1:
                return next(iter(self._models.values()))
            raise UnknownModel(f"several models are loaded ({sorted(self._models)}); name one in 'model'")
        try:
            return self._models[name]
        except KeyError as exc:
            raise UnknownModel(f"unknown model {name!r}; loaded: {sorted(self._models)}") from exc

    def all(self) -> list[ModelHandle]:
        return list(self._models.values())

    def close(self) -> None:
        for handle in self._models.values():
            handle.batcher.stop()
