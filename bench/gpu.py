"""The GPU part of benchmark 1: ONNX Runtime CUDA (I/O binding, fp32 and fp16) against PyTorch CUDA.

Runs only where a GPU is usable: ``torch.cuda.is_available()`` for the PyTorch side, and for ONNX Runtime a
session whose ``get_providers()`` really starts with the CUDA provider (onnxruntime-gpu silently falls back to
the CPU when CUDA libraries are missing). Anywhere else it prints "no GPU here".

- ONNX Runtime CUDA: input bound as a device ``OrtValue`` and outputs bound on the device, so a call is the
  graph alone (the service copies in and out; that cost is in benchmark 2). Every batch size is warmed up
  first (cuDNN's exhaustive algorithm search runs on first use of a shape).
- fp16: the trained module is cast to half on the GPU and exported to a separate ONNX file. Its numbers
  count only where parity holds: the largest per-point score difference against the fp32 graph on real
  windows must stay within 1 % of the bundle's calibrated warning threshold (the tolerance at which no
  point changes level near the threshold by more than rounding); otherwise the row says so.
- PyTorch CUDA: eager fp32 and autocast fp16, with ``torch.cuda.synchronize()`` inside each timed call.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench import bundles, report
from bench.model_throughput import time_calls
from models.manifest import Manifest
from models.runtime import CPU, CUDA, open_session, session_options
from models.scoring import normalise, score_windows

FP16_TOLERANCE_OF_WARNING = 0.01


def _torch_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _ort_cuda(onnx_path: Path) -> bool:
    if CUDA not in ort.get_available_providers() or not Path("/dev/nvidiactl").exists():
        return False  # no driver: skip the probe (onnxruntime-gpu would log a missing-library error)
    ort.set_default_logger_severity(3)  # the failed probe on a host without CUDA libraries is expected
    session = ort.InferenceSession(str(onnx_path), session_options(), providers=[CUDA, CPU])
    return bool(session.get_providers()[0] == CUDA)


def _bound_run(session: ort.InferenceSession, x: np.ndarray) -> Any:
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda")
    return lambda: session.run_with_iobinding(binding)


def _export_fp16(module: Any, length: int, features: int, path: Path) -> None:
    import torch

    half = module.half().cuda().eval()
    example = torch.zeros(2, length, features, dtype=torch.float16, device="cuda")
    with torch.no_grad():
        torch.onnx.export(
            half,
            (example,),
            str(path),
            input_names=["window"],
            output_names=["reconstruction"],
            dynamic_axes={"window": {0: "batch"}, "reconstruction": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )


def _fp16_parity(fp16: ort.InferenceSession, bundle: Path) -> tuple[float, float]:
    """(max |score_fp16 - score_fp32| over real windows, tolerance)."""
    manifest = Manifest.load(bundle)
    from bench.workload import sample_rows

    rows = normalise(sample_rows(), manifest.normalisation)
    length = manifest.window_length
    windows = np.stack([rows[i : i + length] for i in range(0, len(rows) - length, 7)][:256])
    reference = open_session(bundle / manifest.onnx.file, "cpu").run(
        None, {manifest.onnx.input_name: windows}
    )
    half = fp16.run(None, {fp16.get_inputs()[0].name: windows.astype(np.float16)})
    from models.scoring import ModelOutput

    exact = score_windows(windows, ModelOutput(np.asarray(reference[0], np.float32)), manifest.score).scores
    approx = score_windows(windows, ModelOutput(np.asarray(half[0], np.float32)), manifest.score).scores
    return float(np.max(np.abs(exact - approx))), FP16_TOLERANCE_OF_WARNING * manifest.thresholds.warning


def measure_gpu(
    families: list[str], batches: tuple[int, ...], seconds: float, flops: dict[str, int]
) -> list[dict[str, Any]]:
    first = bundles.family_bundle(families[0])
    torch_ok, ort_ok = _torch_cuda(), _ort_cuda(first / "model.onnx")
    if not (torch_ok or ort_ok):
        print("\n## GPU\n\nno GPU here (torch.cuda unavailable; ONNX Runtime's CUDA provider unavailable)\n")
        return []
    import torch

    if torch_ok:
        print(f"\n## GPU: {torch.cuda.get_device_name(0)}\n")
    records, rows = [], []
    scratch = Path(tempfile.mkdtemp(prefix="fp16-", dir=bundles.BENCH_DIR))
    for family in families:
        bundle = bundles.family_bundle(family)
        manifest = Manifest.load(bundle)
        shape = (manifest.window_length, manifest.n_features)
        engines: dict[str, Any] = {}
        parity: tuple[float, float] | None = None
        if ort_ok:
            engines["ort-cuda-fp32"] = (
                ort.InferenceSession(str(bundle / "model.onnx"), providers=[CUDA]),
                np.float32,
            )
        if torch_ok:
            module = bundles.trained_module(bundle).cuda()
            engines["torch-cuda-fp32"] = (module, torch.float32)
            engines["torch-cuda-fp16-autocast"] = (module, torch.float16)
            if ort_ok:
                try:
                    _export_fp16(bundles.trained_module(bundle), *shape, scratch / f"{family}.onnx")
                    session = ort.InferenceSession(str(scratch / f"{family}.onnx"), providers=[CUDA])
                    parity = _fp16_parity(session, bundle)
                    engines["ort-cuda-fp16"] = (session, np.float16)
                except Exception as exc:  # noqa: BLE001 - an architecture that cannot go fp16 is reported
                    print(f"{family}: fp16 export failed ({type(exc).__name__}: {exc})")
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
            row: dict[str, Any] = {"family": family, "batch": batch}
            for name, (engine, dtype) in engines.items():
                if name.startswith("ort"):
                    fn = _bound_run(engine, x.astype(dtype))
                else:
                    tensor = torch.from_numpy(x).cuda()

                    def fn(m: Any = engine, t: Any = tensor, half: bool = dtype == torch.float16) -> None:
                        with torch.inference_mode(), torch.autocast("cuda", torch.float16, enabled=half):
                            m(t)
                        torch.cuda.synchronize()

                latencies = time_calls(fn, seconds, min_calls=5, warmup=3)
                row[name] = batch / float(np.mean(latencies))
                row[name + " p99 ms"] = float(np.percentile(latencies, 99) * 1000)
            if parity is not None:
                row["fp16 max |d score|"], row["fp16 tolerance"] = parity
                row["fp16 parity holds"] = parity[0] <= parity[1]
            row["best GFLOP/s"] = max(v for k, v in row.items() if k in engines) * flops[family] / 1e9
            records.append(row)
            rows.append(row)
    headers = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("family", "batch"), k))
    report.print_table(headers, [[r.get(h) for h in headers] for r in rows], "GPU throughput (windows/s)")
    return records
