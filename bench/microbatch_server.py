"""The minimal micro-batcher peer of benchmark 3: what a careful user writes in about 50 lines - FastAPI, orjson
in and out, an asyncio queue drained greedily into one ONNX Runtime call on a thread, per-point scores out.

It serves the Vigil bundle's very ``model.onnx`` with its normalisation, stateless windows only (no stream state,
no levels, no sensor shares: less work than Vigil does per request).

    .venv/bin/python -m bench.microbatch_server --bundle artifacts/bench/bundles/tvnet/<version> --port 8002
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

from models.manifest import Manifest
from models.runtime import open_session


def create_app(bundle: Path, max_batch: int = 256) -> FastAPI:
    manifest = Manifest.load(bundle)
    session = open_session(bundle / manifest.onnx.file, "cpu", 0, spinning=False)
    input_name = session.get_inputs()[0].name
    mean = np.asarray(manifest.normalisation.mean, dtype=np.float32)
    scale = np.asarray(manifest.normalisation.scale, dtype=np.float32)
    queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = asyncio.Queue()

    def infer(windows: np.ndarray) -> np.ndarray:
        z = (windows - mean) / scale
        reconstruction = session.run(None, {input_name: z.astype(np.float32)})[0]
        errors: np.ndarray = np.square(z - reconstruction).mean(axis=-1)
        return errors

    async def drain() -> None:
        while True:
            items = [await queue.get()]
            while not queue.empty() and len(items) < max_batch:  # greedy: whatever is waiting, no timer
                items.append(queue.get_nowait())
            scores = await asyncio.to_thread(infer, np.stack([w for w, _ in items]))
            for (_, future), row in zip(items, scores, strict=True):
                future.set_result(row)

    app = FastAPI(title="micro-batcher peer")

    @app.on_event("startup")
    async def start() -> None:
        app.state.drainer = asyncio.create_task(drain())

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.post("/score")
    async def score(request: Request) -> Response:
        window = np.asarray(orjson.loads(await request.body())["window"], dtype=np.float32)
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        await queue.put((window, future))
        return Response(orjson.dumps({"scores": (await future).tolist()}), media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="minimal FastAPI + asyncio micro-batcher peer (benchmark 3)")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    args = parser.parse_args()
    uvicorn.run(create_app(args.bundle), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
