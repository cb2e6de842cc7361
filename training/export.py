"""Export a reconstruction model to ONNX (dynamic batch axis) and prove parity with PyTorch."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch

INPUT_NAME = "window"
OUTPUT_NAMES = ["reconstruction"]
DEFAULT_OPSET = 17
PARITY_BATCH_SIZES = (1, 7, 64)
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model."""


@dataclass(frozen=True)
class ExportResult:
    path: Path
    opset: int
    input_name: str
    output_names: list[str]
    max_abs_diff: dict[int, float]
    tolerance: float

    @property
    def passed(self) -> bool:
        return all(diff <= self.tolerance for diff in self.max_abs_diff.values())


def export_onnx(
    module: torch.nn.Module,
    path: Path,
    window_length: int,
    n_features: int,
    opset: int = DEFAULT_OPSET,
    exporter: Literal["torchscript", "dynamo"] = "torchscript",
    output_names: list[str] | None = None,
) -> Path:
    """Write ``module`` (``[B, L, C] -> [B, L, C]``) as ONNX with a dynamic batch axis."""
    names = output_names or OUTPUT_NAMES
    module = module.eval()
    prepare = getattr(module, "prepare_for_export", None)
    if callable(prepare):
        prepare()
    example = torch.zeros(2, window_length, n_features, dtype=torch.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            dynamic: dict[str, dict[int, str]] = {INPUT_NAME: {0: "batch"}}
            dynamic.update({name: {0: "batch"} for name in names})
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes=dynamic,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        else:
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_shapes=({0: batch},),
                opset_version=max(opset, 18),
                dynamo=True,
                verbose=False,
            )
            if program is None:
                raise ExportError("dynamo exporter returned no program")
            program.save(str(path))
    onnx.checker.check_model(str(path))
    return path


def run_onnx(session: ort.InferenceSession, windows: np.ndarray[Any, Any]) -> list[np.ndarray[Any, Any]]:
    name = session.get_inputs()[0].name
    return list(session.run(None, {name: windows.astype(np.float32, copy=False)}))


def check_parity(
    module: torch.nn.Module,
    path: Path,
    window_length: int,
    n_features: int,
    batch_sizes: tuple[int, ...] = PARITY_BATCH_SIZES,
    tolerance: float = PARITY_TOLERANCE,
    seed: int = 0,
) -> ExportResult:
    """Max |torch - ORT| over every output at each batch size, on random normalised windows."""
    module = module.eval()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    diffs: dict[int, float] = {}
    for batch in batch_sizes:
        x = torch.randn(batch, window_length, n_features, generator=generator)
        with torch.no_grad():
            expected = module(x)
        expected_list = list(expected) if isinstance(expected, tuple | list) else [expected]
        got = run_onnx(session, x.numpy())
        if len(got) != len(expected_list):
            raise ExportError(f"graph has {len(got)} outputs, model {len(expected_list)}")
        # np.max keeps a NaN (Python's max drops one that is not first): an output that is NaN in either
        # runtime fails the check instead of passing it unseen.
        diffs[batch] = float(
            np.max([np.max(np.abs(e.numpy() - g)) for e, g in zip(expected_list, got, strict=True)])
        )
    model = onnx.load(str(path))
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return ExportResult(
        path=path,
        opset=opset,
        input_name=session.get_inputs()[0].name,
        output_names=[o.name for o in session.get_outputs()],
        max_abs_diff=diffs,
        tolerance=tolerance,
    )
