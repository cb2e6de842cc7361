"""The naive peer of benchmark 3: the server a user writes first - FastAPI + PyTorch eager, one inference per
request, no batching, a pydantic body, a plain ``def`` route (FastAPI runs it in its thread pool).

It serves the same trained model as the Vigil bundle (weights from the bench cache; startup checks it against
the bundle's ONNX graph) and answers ``{"scores": [L floats]}``: per-point scores only, less than Vigil returns
(no levels, no sensor shares), which favours this peer.

    .venv/bin/python -m bench.naive_server --bundle artifacts/bench/bundles/tvnet/<version> --port 8001
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from bench.bundles import trained_module
from models.manifest import Manifest


class WindowRequest(BaseModel):
    window: list[list[float]]


def parity_with_bundle(module: Any, bundle: Path) -> float:
    """Max |torch - ONNX Runtime| of the reconstruction on random windows: proves it is the same model."""
    from models.runtime import load_bundle

    loaded = load_bundle(bundle, "cpu", 1)
    shape = (loaded.manifest.window_length, loaded.manifest.n_features)
    x = np.random.default_rng(0).standard_normal((4, *shape), dtype=np.float32)
    with torch.inference_mode():
        expected = module(torch.from_numpy(x)).numpy()
    return float(np.max(np.abs(expected - loaded.run(x).reconstruction)))


def create_app(bundle: Path) -> FastAPI:
    manifest = Manifest.load(bundle)
    module = trained_module(bundle)
    print(
        f"naive server: {manifest.name}, max |torch - onnx| = {parity_with_bundle(module, bundle):.2e}",
        flush=True,
    )
    mean = torch.tensor(manifest.normalisation.mean, dtype=torch.float32)
    scale = torch.tensor(manifest.normalisation.scale, dtype=torch.float32)
    app = FastAPI(title="naive peer")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/score")
    def score(request: WindowRequest) -> dict[str, list[float]]:
        x = (torch.tensor(request.window, dtype=torch.float32) - mean) / scale
        with torch.inference_mode():
            reconstruction = module(x.unsqueeze(0))[0]
        scores = torch.square(x - reconstruction).mean(dim=-1)
        return {"scores": scores.tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="naive FastAPI + PyTorch eager peer (benchmark 3)")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    uvicorn.run(create_app(args.bundle), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
