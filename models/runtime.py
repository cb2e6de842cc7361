"""Open a model bundle on ONNX Runtime and check that its manifest and graph agree (torch-free).

Used by calibration, offline evaluation and the service, so all three run the same graph the same way.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort

from models.manifest import BundleError, Manifest, sha256_file
from models.scoring import F32, ModelOutput, Reconstruct

log = logging.getLogger(__name__)

Provider = Literal["auto", "cuda", "cpu"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def session_options(
    intra_op_threads: int = 0, inter_op_threads: int = 1, spinning: bool = True
) -> ort.SessionOptions:
    """``spinning=False`` stops idle intra-op threads from busy-waiting for work: right in a server, where
    the event loop and Redis need the same cores between batches; ORT's default (spin) suits a bench loop."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # the failed CUDA probe on CPU hosts is expected, not an error
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


@functools.cache
def cuda_unavailable_reason() -> str | None:
    """Why the CUDA provider cannot run here, found quietly (None: it can).

    Asking ONNX Runtime for CUDA on a machine without the CUDA libraries makes it print a red error (and a
    warning) at every session it opens, then fall back to the CPU. Loading the provider library ourselves
    tells the same thing without the noise: the loader names the first missing library.
    """
    if CUDA not in ort.get_available_providers():
        return "this ONNX Runtime build has no CUDA provider"
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not library.exists():
        return f"{library.name} not found next to ONNX Runtime"
    try:
        ctypes.CDLL("libcuda.so.1")  # the NVIDIA driver
        ctypes.CDLL(str(library), mode=ctypes.RTLD_LOCAL)
    except OSError as exc:
        return str(exc).splitlines()[0]
    return None


@functools.cache
def _say_provider(choice: str) -> None:
    log.info("%s", choice)


def open_session(
    path: Path, provider: Provider = "cpu", intra_op_threads: int = 0, spinning: bool = True
) -> ort.InferenceSession:
    """An ORT session on CUDA when asked (``auto``: when it can run here, see :func:`cuda_unavailable_reason`),
    else CPU. Raises :class:`BundleError` when ``cuda`` is asked for and cannot run.

    ``get_providers()`` of the result says what is really used.
    """
    providers = [CPU]
    if provider in ("auto", "cuda"):
        reason = cuda_unavailable_reason()
        if reason is None:
            providers = [CUDA, CPU]
        elif provider == "cuda":
            raise BundleError(f"{path}: CUDA provider requested but it cannot run here: {reason}")
        else:
            _say_provider(f"ONNX Runtime provider: CPU (CUDA cannot run here: {reason})")
    options = session_options(intra_op_threads, spinning=spinning)
    session = ort.InferenceSession(str(path), options, providers=providers)
    if provider == "cuda" and session.get_providers()[0] != CUDA:
        raise BundleError(f"{path}: CUDA provider requested but unavailable")
    return session


def provider_in_use(session: ort.InferenceSession) -> str:
    return "cuda" if session.get_providers()[0] == CUDA else "cpu"


def graph_reconstruct(onnx_path: Path, threads: int) -> Reconstruct:
    """A graph file alone (no manifest) as a ``windows → ModelOutput`` function on the CPU: what training
    checks, calibrates and cross-fits with."""
    session = open_session(onnx_path, "cpu", threads)
    input_name = session.get_inputs()[0].name

    def reconstruct(windows: F32) -> ModelOutput:
        outputs = session.run(None, {input_name: windows})
        return ModelOutput(np.asarray(outputs[0], dtype=np.float32), outputs[1] if len(outputs) > 1 else None)

    return reconstruct


@dataclass
class LoadedBundle:
    """A manifest with its verified ONNX Runtime session."""

    manifest: Manifest
    session: ort.InferenceSession
    path: Path

    @property
    def provider(self) -> str:
        return provider_in_use(self.session)

    def run(self, windows: F32) -> ModelOutput:
        """Normalised windows ``[B, L, C]`` → model output (reconstruction ``[B, L, C]``, association)."""
        outputs: list[Any] = self.session.run(None, {self.manifest.onnx.input_name: windows})
        association = outputs[1] if len(outputs) > 1 else None
        return ModelOutput(np.asarray(outputs[0], dtype=np.float32), association)


def verify_graph(manifest: Manifest, session: ort.InferenceSession, path: Path) -> None:
    """Refuse a bundle whose manifest and graph disagree (names, window length, feature count)."""
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].name != manifest.onnx.input_name:
        raise BundleError(
            f"{path}: graph input {[i.name for i in inputs]} != manifest {manifest.onnx.input_name}"
        )
    shape = inputs[0].shape
    if len(shape) != 3 or shape[1:] != [manifest.window_length, manifest.n_features]:
        raise BundleError(
            f"{path}: graph input shape {shape} != [batch, {manifest.window_length}, {manifest.n_features}]"
        )
    if isinstance(shape[0], int):
        raise BundleError(
            f"{path}: graph has a fixed batch size {shape[0]}; a dynamic batch axis is required"
        )
    outputs = [o.name for o in session.get_outputs()]
    if outputs != manifest.onnx.output_names:
        raise BundleError(f"{path}: graph outputs {outputs} != manifest {manifest.onnx.output_names}")


def load_bundle(
    bundle_dir: Path, provider: Provider = "cpu", intra_op_threads: int = 0, spinning: bool = True
) -> LoadedBundle:
    manifest = Manifest.load(bundle_dir)
    onnx_path = bundle_dir / manifest.onnx.file
    if not onnx_path.is_file():
        raise BundleError(f"{bundle_dir}: missing {manifest.onnx.file}")
    digest = sha256_file(onnx_path)
    if digest != manifest.onnx.sha256:
        raise BundleError(f"{onnx_path}: sha256 {digest[:12]}… differs from the manifest's")
    session = open_session(onnx_path, provider, intra_op_threads, spinning)
    verify_graph(manifest, session, onnx_path)
    return LoadedBundle(manifest=manifest, session=session, path=bundle_dir)
