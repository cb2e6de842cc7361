"""Where a bundle's ONNX graph spends its time: ONNX Runtime's own per-node profile, summed by operator type,
and the slowest nodes with their input shapes and convolution attributes.

    .venv/bin/python -m bench.onnx_profile artifacts/eval/bundles/machine-2-3/convtimenet/eval [--batch 256]

The graph runs ``--runs`` times on random windows of the bundle's shape (CPU provider, ``--threads`` intra-op
threads, after two warm-up runs that the profile leaves out); times are ms per run.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from bench import report
from models.manifest import Manifest


def node_attributes(model_path: Path) -> dict[str, dict[str, Any]]:
    """Each node's attributes by name (kernel shape, group: what tells a grouped convolution apart)."""
    return {
        node.name: {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for node in onnx.load(str(model_path)).graph.node
    }


def profile(bundle: Path, batch: int, runs: int, threads: int) -> tuple[list[dict[str, Any]], float]:
    """Per-node kernel times of ``runs`` runs at ``batch`` windows: (node records, total ms per run)."""
    manifest = Manifest.load(bundle)
    model_path = bundle / manifest.onnx.file
    windows = (
        np.random.default_rng(0)
        .normal(size=(batch, manifest.window_length, manifest.n_features))
        .astype(np.float32)
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    feed = {manifest.onnx.input_name: windows}
    warm = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    for _ in range(2):
        warm.run(None, feed)
    options.enable_profiling = True
    options.profile_file_prefix = str(report.RESULTS_DIR / "onnx_profile")
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    for _ in range(runs + 1):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    attributes = node_attributes(model_path)
    nodes: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        name = event["name"].removesuffix("_kernel_time")
        record = nodes.setdefault(
            name,
            {
                "node": name,
                "op": event["args"]["op_name"],
                "inputs": [list(s.values())[0] for s in event["args"].get("input_type_shape", [])],
                "attributes": {
                    k: v for k, v in attributes.get(name, {}).items() if k in ("group", "kernel_shape")
                },
                "us": [],
            },
        )
        record["us"].append(event["dur"])
    for record in nodes.values():  # the first run of the profiled session is its own warm-up: dropped
        record["ms"] = sum(record["us"][1:]) / max(len(record["us"]) - 1, 1) / 1000
    total = sum(record["ms"] for record in nodes.values())
    return sorted(nodes.values(), key=lambda r: -r["ms"]), total


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bundles", type=Path, nargs="+")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    info = report.print_header("ONNX Runtime profile of bundles")
    report.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results = report.Results("onnx_profile", info)
    for bundle in args.bundles:
        nodes, total = profile(bundle, args.batch, args.runs, args.threads)
        by_op: collections.Counter[str] = collections.Counter()
        counts: collections.Counter[str] = collections.Counter()
        for record in nodes:
            by_op[record["op"]] += record["ms"]
            counts[record["op"]] += 1
        print(f"\n## {bundle}: {total:.1f} ms per run of {args.batch} windows ({args.threads} threads)\n")
        report.print_table(
            ["operator", "nodes", "ms per run", "% of the graph"],
            [(op, counts[op], f"{ms:.1f}", f"{100 * ms / total:.1f}") for op, ms in by_op.most_common()],
        )
        print()
        report.print_table(
            ["slowest node", "operator", "ms per run", "first input shape", "attributes"],
            [
                (r["node"], r["op"], f"{r['ms']:.1f}", r["inputs"][0] if r["inputs"] else "", r["attributes"])
                for r in nodes[: args.top]
            ],
        )
        results.add(bundle=str(bundle), batch=args.batch, total_ms=total, by_op=dict(by_op))
    results.save()


if __name__ == "__main__":
    main()
