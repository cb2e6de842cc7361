"""ONNX Runtime inference over a verified bundle: CUDA provider when available (I/O binding), else CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models.manifest import Manifest
from models.runtime import CUDA, LoadedBundle, Provider, load_bundle
from models.scoring import F32, ModelOutput

log = logging.getLogger(__name__)


class ONNXEngine:
    """Runs normalised windows ``[B, L, C]`` through one bundle's session. Not thread-safe by design:
    exactly one batcher worker thread calls :meth:`run`."""

    def __init__(self, bundle: LoadedBundle) -> None:
        self.bundle = bundle
        self.manifest: Manifest = bundle.manifest
        self.provider = bundle.provider
        self._use_binding = bundle.session.get_providers()[0] == CUDA
        self._output_names = [o.name for o in bundle.session.get_outputs()]

    @classmethod
    def open(
        cls, bundle_dir: Path, provider: Provider, intra_op_threads: int, spinning: bool = False
    ) -> ONNXEngine:
        engine = cls(load_bundle(bundle_dir, provider, intra_op_threads, spinning))
        log.info(
            "model %s %s on ONNX Runtime %s provider",
            engine.manifest.name,
            engine.manifest.version,
            engine.provider,
        )
        return engine

    def run(self, windows: F32) -> ModelOutput:
        if not self._use_binding:
            return self.bundle.run(windows)
        session = self.bundle.session
        binding = session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(windows), "cuda", 0)
        binding.bind_ortvalue_input(self.manifest.onnx.input_name, value)
        for name in self._output_names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
        association = np.asarray(outputs[1], dtype=np.float32) if len(outputs) > 1 else None
        return ModelOutput(np.asarray(outputs[0], dtype=np.float32), association)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 8, 64)) -> None:
        """First runs allocate (and on CUDA search conv algorithms): pay that before serving."""
        shape = (self.manifest.window_length, self.manifest.n_features)
        for batch in batch_sizes:
            self.run(np.zeros((batch, *shape), dtype=np.float32))
