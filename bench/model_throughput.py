"""Benchmark 1 - model throughput: windows/s and latency per batch size, PyTorch eager vs ONNX Runtime.

For each family at its default size (L=100, C=38, the cached bench bundle with its trained weights): batch
1, 8, 32, 64, 256 through PyTorch eager (``inference_mode``) and ONNX Runtime's CPU provider, each with 1 and
2 threads. FLOPs per window are counted two ways: ``torch.utils.flop_counter.FlopCounterMode`` (matmul,
conv and attention ops; it does not count LSTM cells) and a count over the ONNX graph (2 x MACs of MatMul,
Gemm, Conv, ConvTranspose and LSTM from inferred shapes; element-wise ops ignored). Achieved GFLOP/s is set
against the machine's measured fp32 matmul rate (torch ``mm`` 1024^3) at the same thread count.

On a GPU (torch CUDA or ONNX Runtime's CUDA provider) it also measures ONNX Runtime CUDA with I/O binding
(input and output on the device) and fp16 where parity holds, against PyTorch CUDA; otherwise it prints
"no GPU here".

    .venv/bin/python -m bench.model_throughput [--families tvnet,pca] [--quick] [--repeat 3]
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from bench import bundles, report
from models.manifest import Manifest

BATCHES = (1, 8, 32, 64, 256)


def time_calls(fn: Callable[[], object], seconds: float, min_calls: int = 3, warmup: int = 2) -> np.ndarray:
    """Latencies (s) of repeated calls for about ``seconds`` (at least ``min_calls``), after ``warmup``."""
    for _ in range(warmup):
        fn()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < min_calls or time.perf_counter() < deadline:
        started = time.perf_counter()
        fn()
        latencies.append(time.perf_counter() - started)
    return np.asarray(latencies)


COUNTED_OPS = ("MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM")


def onnx_flops(path: Path, batch: int = 1) -> tuple[int, bool]:
    """2 x MACs per window of the graph's MatMul/Gemm/Conv/ConvTranspose/LSTM nodes; (flops, complete).

    Shapes come from running the graph once at ``batch`` with every operand exposed as an output (static
    shape inference loses dimensions behind Reshape), so the count is exact for the shapes actually run."""
    import onnxruntime as ort

    model = onnx.load(str(path))
    known = {init.name: list(init.dims) for init in model.graph.initializer}
    exposed = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type in COUNTED_OPS:
            for name in [*node.input[:3], node.output[0]]:
                if name and name not in known and name not in exposed:
                    model.graph.output.append(onnx.ValueInfoProto(name=name))
                    exposed.add(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0]
    window = np.zeros((batch, *feed.shape[1:]), dtype=np.float32)
    names = [o.name for o in session.get_outputs()]
    shapes = {
        **known,
        **{n: list(v.shape) for n, v in zip(names, session.run(names, {feed.name: window}), strict=True)},
    }
    total, complete = 0, True
    for node in model.graph.node:
        if node.op_type not in COUNTED_OPS:
            continue
        try:
            if node.op_type == "MatMul":
                flops = 2 * math.prod(shapes[node.output[0]]) * shapes[node.input[0]][-1]
            elif node.op_type == "Gemm":
                a = shapes[node.input[0]]
                trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
                flops = 2 * math.prod(shapes[node.output[0]]) * (a[0] if trans_a else a[1])
            elif node.op_type == "Conv":
                flops = 2 * math.prod(shapes[node.output[0]]) * math.prod(shapes[node.input[1]][1:])
            elif node.op_type == "ConvTranspose":
                flops = 2 * math.prod(shapes[node.input[0]]) * math.prod(shapes[node.input[1]][1:])
            else:  # LSTM: X [seq, batch, input], W [dirs, 4H, input], R [dirs, 4H, H]
                x, w, r = shapes[node.input[0]], shapes[node.input[1]], shapes[node.input[2]]
                flops = 2 * x[0] * x[1] * w[0] * w[1] * (w[2] + r[2])
        except (KeyError, IndexError):
            complete = False
            continue
        total += flops
    return total // batch, complete


def torch_flops(module: Any, window_length: int, n_features: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, window_length, n_features))
    return int(counter.get_total_flops())


def matmul_gflops(threads: int, seconds: float) -> float:
    """The machine's practical fp32 rate: torch ``mm`` of two 1024x1024 matrices, best call (least disturbed
    by other load on a shared machine)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    latencies = time_calls(lambda: torch.mm(a, b), seconds, min_calls=20)
    return 2 * 1024**3 / float(np.min(latencies)) / 1e9


def nominal_gflops(cores: int) -> tuple[float, str]:
    """Nominal fp32 peak from /proc/cpuinfo: cores x clock x FLOPs/cycle, an upper bound. FLOPs/cycle assume
    two FMA pipes of the widest vector the core executes at full width: 64 with AVX-512 (32 on AMD before
    Zen 5, which splits 512-bit ops in two), 32 with AVX2+FMA, 16 with AVX, else 8. The clock is the current
    "cpu MHz", not the turbo or all-core clock, so treat the result as indicative."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""

    def field(name: str) -> str:
        return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith(name)), "")

    flags = set(field("flags").split())
    mhz = float(field("cpu MHz") or "nan")
    amd_split = field("vendor_id") == "AuthenticAMD" and int(field("cpu family") or 0) < 26
    if "avx512f" in flags:
        per_cycle, isa = (32, "AVX-512 at 256-bit width") if amd_split else (64, "AVX-512")
    elif {"avx2", "fma"} <= flags:
        per_cycle, isa = 32, "AVX2+FMA"
    elif "avx" in flags:
        per_cycle, isa = 16, "AVX"
    else:
        per_cycle, isa = 8, "SSE"
    return cores * mhz * per_cycle / 1000.0, f"{cores} x {mhz:.0f} MHz x {per_cycle} FLOP/cycle ({isa})"


def cpu_cells(
    family: str, batches: tuple[int, ...], threads: tuple[int, ...], seconds: float
) -> list[dict[str, Any]]:
    import torch

    from models.runtime import open_session

    bundle = bundles.family_bundle(family)
    module = bundles.trained_module(bundle)
    manifest = Manifest.load(bundle)
    shape = (manifest.window_length, manifest.n_features)
    rng = np.random.default_rng(0)
    cells = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        session = open_session(bundle / manifest.onnx.file, "cpu", n_threads)
        name = manifest.onnx.input_name
        for batch in batches:
            x = rng.standard_normal((batch, *shape), dtype=np.float32)
            tensor = torch.from_numpy(x)

            def run_torch(t: Any = tensor) -> object:
                with torch.inference_mode():
                    return module(t)

            def run_ort(s: Any = session, feed: dict[str, np.ndarray] = {name: x}) -> object:  # noqa: B006
                return s.run(None, feed)

            for engine, fn in (("torch", run_torch), ("ort", run_ort)):
                latencies = time_calls(fn, seconds)
                cells.append(
                    {
                        "family": family,
                        "engine": engine,
                        "threads": n_threads,
                        "batch": batch,
                        "windows_per_s": batch / float(np.mean(latencies)),
                        "p50_ms": float(np.percentile(latencies, 50) * 1000),
                        "p99_ms": float(np.percentile(latencies, 99) * 1000),
                        "calls": len(latencies),
                    }
                )
    return cells


def pivot(cells: list[dict[str, Any]], key: str) -> dict[tuple[str, int], dict[str, float]]:
    table: dict[tuple[str, int], dict[str, float]] = {}
    for c in cells:
        table.setdefault((c["family"], c["batch"]), {})[f"{c['engine']}-{c['threads']}"] = c[key]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(bundles.FAMILIES))
    parser.add_argument("--batches", default=None, help="default 1,8,32,64,256 (--quick: 1,8,64)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed calls per cell")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the tables show medians")
    parser.add_argument("--quick", action="store_true", help="smoke run: 0.2 s per cell, batches 1,8,64")
    parser.add_argument("--no-gpu", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seconds = 0.2
    args.batches = args.batches or ("1,8,64" if args.quick else ",".join(map(str, BATCHES)))
    families = [f for f in args.families.split(",") if f]
    batches = tuple(int(b) for b in args.batches.split(","))
    threads = tuple(int(t) for t in args.threads.split(","))

    info = report.print_header("Model throughput (benchmark 1)")
    results = report.Results("model_throughput", info)
    try:
        flop_rows, flops = [], {}
        for family in families:
            bundle = bundles.family_bundle(family)
            manifest = Manifest.load(bundle)
            module = bundles.trained_module(bundle)
            by_torch = torch_flops(module, manifest.window_length, manifest.n_features)
            by_graph, complete = onnx_flops(bundle / manifest.onnx.file)
            flops[family] = by_graph if complete else max(by_graph, by_torch)
            params = sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())
            size_mb = (bundle / manifest.onnx.file).stat().st_size / 1e6
            flop_rows.append([family, params, by_torch / 1e6, by_graph / 1e6 if complete else None, size_mb])
            results.add(kind="flops", family=family, params=params, torch_flops=by_torch, onnx_flops=by_graph)
        report.print_table(
            [
                "family",
                "parameters + buffers",
                "MFLOP/window (FlopCounterMode)",
                "MFLOP/window (ONNX graph)",
                "model.onnx MB",
            ],
            flop_rows,
            "FLOPs per window (L=100, C=38)",
        )
        roofs = {t: matmul_gflops(t, min(args.seconds, 1.0)) for t in threads}
        peaks = {t: nominal_gflops(t) for t in threads}
        report.print_table(
            [
                "threads",
                "fp32 matmul GFLOP/s (torch mm 1024^3, best call)",
                "nominal peak GFLOP/s",
                "nominal peak from",
            ],
            [[t, roofs[t], peaks[t][0], peaks[t][1]] for t in threads],
            "Hardware limit",
        )
        results.add(kind="roof", matmul_gflops=roofs, nominal_gflops={t: p[0] for t, p in peaks.items()})

        cells: list[dict[str, Any]] = []
        for family in families:
            runs = [cpu_cells(family, batches, threads, args.seconds) for _ in range(args.repeat)]
            for position, first in enumerate(runs[0]):
                merged = dict(first)
                for key in ("windows_per_s", "p50_ms", "p99_ms"):
                    merged[key] = report.median_of([run[position] for run in runs], key)
                cells.append(merged)
                results.add(kind="cpu", **merged)
        engines = [f"{e}-{t}" for t in threads for e in ("torch", "ort")]
        rate, p50, p99 = pivot(cells, "windows_per_s"), pivot(cells, "p50_ms"), pivot(cells, "p99_ms")
        rows = []
        for (family, batch), values in rate.items():
            best_engine = max(values, key=lambda e: values[e])
            used = int(best_engine.rsplit("-", 1)[1])
            gflops = values[best_engine] * flops[family] / 1e9
            rows.append(
                [
                    family,
                    batch,
                    *(values.get(e) for e in engines),
                    gflops,
                    100 * gflops / roofs[used],
                    100 * gflops / peaks[used][0],
                ]
            )
        report.print_table(
            [
                "family",
                "batch",
                *(f"{e} windows/s" for e in engines),
                "best GFLOP/s",
                "% of matmul",
                "% of nominal peak",
            ],
            rows,
            "CPU throughput (windows/s; torch = PyTorch eager, ort = ONNX Runtime CPU; -N = threads)",
        )
        report.print_table(
            ["family", "batch", *(f"{e} p50/p99 ms" for e in engines)],
            [
                [
                    f,
                    b,
                    *(
                        f"{report.fmt(p50[(f, b)].get(e), 2)} / {report.fmt(p99[(f, b)].get(e), 2)}"
                        for e in engines
                    ),
                ]
                for (f, b) in rate
            ],
            "CPU latency per batch call",
        )
        if args.no_gpu:
            print("GPU part skipped (--no-gpu)")
        else:
            from bench.gpu import measure_gpu

            for record in measure_gpu(families, batches, args.seconds, flops):
                results.add(kind="gpu", **record)
    finally:
        results.save()


if __name__ == "__main__":
    main()
