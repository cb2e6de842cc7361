"""The live view: an open HTML shell at ``/ui`` and the read routes it calls.

The shell holds no data; the page asks for a ``read`` key and sends it as a bearer header (and as the
WebSocket feed's ``token``). Its data routes: ``GET /streams`` (active streams), ``GET /streams/{id}/scores``
(recent scores from :class:`~service.history.ScoreHistory` with the model's thresholds) and
``GET /streams/{id}/window`` (the raw window, its reconstruction and per-point scores, computed on demand).
They read through the stores (:class:`~service.catalog.StreamCatalog`, :class:`~service.alerts.AlertTracker`,
:class:`~service.history.ScoreHistory`), which own the Redis keys and answer a Redis failure with
``StoreUnavailable``; no route here touches Redis itself.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from models.runtime import LoadedBundle, load_bundle
from models.scoring import F32, normalise, score_windows
from service.alerts import StreamLevels
from service.catalog import StreamCatalog
from service.deps import ComponentsDep, ReadKey
from service.errors import UnknownStream
from service.registry import ModelHandle
from service.responses import JSONBytesResponse
from service.schemas import STREAM_ID_PATTERN
from service.windows import unpack_records

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
STATIC_PATH = "/ui/static"
ALERT_ORDER = {"firing": 0, "pending": 1}
# The shell runs only its own files: no inline script, no third-party origin, not framed.
SHELL_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter(tags=["live view"])
StreamIdPath = Annotated[str, PathParam(pattern=STREAM_ID_PATTERN)]


@dataclass(frozen=True)
class WindowView:
    """One window's reconstruction: ``reconstruction`` [L, C] in raw units, ``scores`` [L],
    ``contributions`` [L, C] (rows sum to 1), ``sensor_shares`` [C] (each sensor's share of the window's
    score mass, summing to 1)."""

    reconstruction: F32
    scores: F32
    contributions: F32
    sensor_shares: F32


def reconstruct_window(bundle: LoadedBundle, raw: F32) -> WindowView:
    """Raw window ``[L, C]`` → its reconstruction and scores, with the service's scoring function."""
    m = bundle.manifest
    z = normalise(raw, m.normalisation)[None]  # [1, L, C]
    output = bundle.run(z)
    scored = score_windows(z, output, m.score)
    scale = np.asarray(m.normalisation.scale, dtype=np.float32)
    mean = np.asarray(m.normalisation.mean, dtype=np.float32)
    scores, contributions = scored.scores[0], scored.contributions[0]
    mass = scores @ contributions  # [C]: each point's score split by its sensors' shares
    total = float(mass.sum())
    shares = mass / np.float32(total) if total > 0 else np.full_like(mass, 1.0 / len(mass))
    return WindowView(output.reconstruction[0] * scale + mean, scores, contributions, shares)


@dataclass
class Reconstructor:
    """On-demand reconstructions for the live view, on a second ONNX Runtime session per model.

    The batcher's engine belongs to its worker thread (on CUDA it binds I/O per call) and hands back scores
    only, so this keeps its own CPU session per model, opened lazily from the same bundle directory and
    replaced when a reload serves another version. Each costs one more copy of the weights in host memory and
    runs on one thread, serialised per model by a lock, so a view never takes more than one core from scoring.
    """

    intra_op_threads: int = 1
    _bundles: dict[str, LoadedBundle] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def reconstruct(self, handle: ModelHandle, raw: F32) -> WindowView:
        lock = self._locks.setdefault(handle.name, asyncio.Lock())
        async with lock:
            bundle = self._bundles.get(handle.name)
            path = handle.engine.bundle.path
            if bundle is None or bundle.path != path:
                bundle = await asyncio.to_thread(load_bundle, path, "cpu", self.intra_op_threads)
                self._bundles[handle.name] = bundle
            return await asyncio.to_thread(reconstruct_window, bundle, raw)


def install(app: FastAPI) -> None:
    """Serve the page's static files and give the app its on-demand reconstructor."""
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="ui-static")
    app.state.reconstructor = Reconstructor()


def get_reconstructor(request: Request) -> Reconstructor:
    reconstructor: Reconstructor = request.app.state.reconstructor
    return reconstructor


ReconstructorDep = Annotated[Reconstructor, Depends(get_reconstructor)]


async def get_catalog(components: ComponentsDep) -> StreamCatalog:
    return StreamCatalog(components.redis)  # holds nothing but the client: one per request costs nothing


CatalogDep = Annotated[StreamCatalog, Depends(get_catalog)]


@router.get("/ui", include_in_schema=False)
async def live_view() -> FileResponse:
    """The page itself: open, because it holds no data until the user gives it a read key."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=SHELL_HEADERS)


@router.get("/streams", summary="Live streams: model, last ts, points, alert state (firing first)")
async def list_streams(
    components: ComponentsDep,
    catalog: CatalogDep,
    _: ReadKey,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> JSONBytesResponse:
    """Streams whose window has not expired, found by SCAN (cost: see ``StreamCatalog.find``); ``truncated``
    says that more than ``limit`` exist."""
    ids, truncated = await catalog.find(limit)
    summaries = await catalog.summaries(ids)
    alerts = await components.alerts.states([s.stream_id for s in summaries])
    streams: list[dict[str, Any]] = [
        {
            "stream_id": summary.stream_id,
            "model": summary.model,
            "last_ts": summary.last_ts,
            "points_total": summary.points_total,
            "alert": {"state": state, "severity": severity},
        }
        for summary, (state, severity) in zip(summaries, alerts, strict=True)
    ]
    streams.sort(key=lambda s: (ALERT_ORDER.get(s["alert"]["state"], 2), s["stream_id"]))
    return JSONBytesResponse({"streams": streams, "truncated": truncated}, headers=NO_STORE)


def thresholds_of(handle: ModelHandle, now: StreamLevels) -> dict[str, Any]:
    """The stream's thresholds in effect (per stream or the calibrated ones) beside its model's calibrated."""
    t = handle.manifest.thresholds
    return {
        "warning": now.warning,
        "critical": now.critical,
        "exit": now.exit,
        "per_stream": now.per_stream,
        "learned_points": now.learned_points,
        "calibrated": {"warning": t.warning, "critical": t.critical},
    }


@router.get("/streams/{stream_id}/scores", summary="A stream's recent scores and the thresholds it meets")
async def stream_scores(
    stream_id: StreamIdPath,
    components: ComponentsDep,
    catalog: CatalogDep,
    _: ReadKey,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 500,
) -> JSONBytesResponse:
    """The newest ``limit`` scored points (at most ``VIGIL_HISTORY_POINTS`` are kept), oldest first, and the
    thresholds the stream's next point meets: with per-stream thresholds (``per_stream``), where its own scores
    have moved them, else the calibrated ones (both under ``calibrated`` too)."""
    model = await catalog.model_of(stream_id)
    if model is None:
        raise UnknownStream(f"unknown stream {stream_id!r}")
    handle = components.models.get(model)
    kept = min(limit, components.settings.history_points)
    scores = await components.history.recent(stream_id, kept, handle.manifest.feature_names)
    body = {
        "stream_id": stream_id,
        "model": handle.name,
        "version": handle.manifest.version,
        "thresholds": thresholds_of(
            handle, await components.alerts.levels_in_effect(stream_id, handle.levels)
        ),
        "scores": scores,
    }
    return JSONBytesResponse(body, headers=NO_STORE)


@router.get("/streams/{stream_id}/window", summary="A stream's raw window with its reconstruction")
async def stream_window(
    stream_id: StreamIdPath,
    components: ComponentsDep,
    catalog: CatalogDep,
    reconstructor: ReconstructorDep,
    _: ReadKey,
    top: Annotated[int, Query(ge=1, le=64)] = 5,
) -> JSONBytesResponse:
    """The last L points as held, reconstructed now by the stream's model: ``scores`` per point and the
    ``top`` sensors by share of the window's score, each with its raw values, reconstruction (raw units) and
    per-point shares. A stream holding fewer than L points has values only (``reconstructed: false``)."""
    held = await catalog.held(stream_id)
    if held is None:
        raise UnknownStream(f"unknown stream {stream_id!r}")
    with components.models.lease(held.model) as handle:
        m = handle.manifest
        ts, values = unpack_records(held.records[-m.window_length :], m.n_features)
        top = min(top, m.n_features)
        body: dict[str, Any] = {
            "stream_id": stream_id,
            "model": m.name,
            "version": m.version,
            "window_length": m.window_length,
            "ts": ts,
            "reconstructed": len(ts) == m.window_length,
            "scores": None,
        }
        if not body["reconstructed"]:
            body["sensors"] = [sensor_view(m.feature_names, i, values) for i in range(top)]
            return JSONBytesResponse(body, headers=NO_STORE)
        view = await reconstructor.reconstruct(handle, values)
        order = np.argsort(-view.sensor_shares, kind="stable")[:top]
        body["scores"] = view.scores
        body["sensors"] = [sensor_view(m.feature_names, int(i), values, view) for i in order]
        return JSONBytesResponse(body, headers=NO_STORE)


def sensor_view(names: list[str], index: int, values: F32, view: WindowView | None = None) -> dict[str, Any]:
    column = np.ascontiguousarray  # orjson serialises contiguous arrays only
    return {
        "sensor": names[index],
        "index": index,
        "share": float(view.sensor_shares[index]) if view else None,
        "values": column(values[:, index]),
        "reconstruction": column(view.reconstruction[:, index]) if view else None,
        "contributions": column(view.contributions[:, index]) if view else None,
    }
