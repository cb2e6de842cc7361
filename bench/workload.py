"""Request kinds of the benchmarks, built identically for the open-loop generator (Python) and wrk (Lua).

Modes (``--modes a,b,c,d,e``):

- ``a`` stream, 1 point per JSON request        - ``b`` stream, 10 points per JSON request
- ``c`` ``/score/batch``, 100 streams x 1 point  - ``d`` stateless 100x38 window as JSON
- ``e`` stream, binary frame of ``P`` points (default 100, a window's worth)

Streaming requests spread over ``n_streams`` streams ``<prefix><g>``: request (or batch item) ``k`` goes to
stream ``g = k mod S`` with ts ``ts_base + (k div S) * P``; each wrk thread ``t`` of ``T`` takes the streams
``g = t (mod T)`` with the same rule, so no two threads share a stream and ts strictly increase per stream.
Every run gets a fresh ``ts_base`` (later than any ts already sent), so runs can follow each other.

Streams are primed before a run with ``L + (g mod stride)`` points: windows are full and the streams' stride
phases are spread, so from the first request about ``points/stride`` windows per point become due, as in a
steady state (without the stagger every stream would reach its next window in the same round).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.codec import BINARY_CONTENT_TYPE, encode_binary, encode_binary_batch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "smd-machine-1-2"
WRK_DIR = Path(__file__).resolve().parent / "wrk"
DATA_DIR = ROOT / "artifacts" / "bench" / "data"
JSON_TYPE = "application/json"


@dataclass(frozen=True)
class Mode:
    key: str
    title: str
    path: str
    content_type: str
    lua: str  # script under bench/wrk/
    points_per_request: int  # points appended (streaming) or window rows (stateless)
    items_per_request: int = 1  # streams touched per request (/score/batch)
    streaming: bool = True


def modes(binary_points: int = 100) -> dict[str, Mode]:
    return {
        "a": Mode("a", "stream, 1 point/request (JSON)", "/score", JSON_TYPE, "stream_json.lua", 1),
        "b": Mode("b", "stream, 10 points/request (JSON)", "/score", JSON_TYPE, "stream_json.lua", 10),
        "c": Mode(
            "c", "/score/batch, 100 streams x 1 point", "/score/batch", JSON_TYPE, "batch_json.lua", 1, 100
        ),
        "d": Mode(
            "d", "stateless 100x38 window (JSON)", "/score", JSON_TYPE, "static.lua", 100, streaming=False
        ),
        "e": Mode(
            "e",
            f"stream, {binary_points} points/request (binary)",
            "/score",
            BINARY_CONTENT_TYPE,
            "stream_binary.lua",
            binary_points,
        ),
        # The same with the columnar answer (`?format=columns`: one array per field).
        "f": Mode(
            "f",
            "stateless 100x38 window (JSON), columnar answer",
            "/score?format=columns",
            JSON_TYPE,
            "static.lua",
            100,
            streaming=False,
        ),
        "g": Mode(
            "g",
            "/score/batch, 100 streams x 1 point, columnar answer",
            "/score/batch?format=columns",
            JSON_TYPE,
            "batch_json.lua",
            1,
            100,
        ),
        "h": Mode(
            "h",
            f"stream, {binary_points} points/request (binary), columnar answer",
            "/score?format=columns",
            BINARY_CONTENT_TYPE,
            "stream_binary.lua",
            binary_points,
        ),
        # Mode c as the binary batch frame (VGLB: one VGL1 frame per item), columnar answer.
        "i": Mode(
            "i",
            "/score/batch, 100 streams x 1 point (binary batch frame), columnar answer",
            "/score/batch?format=columns",
            BINARY_CONTENT_TYPE,
            "batch_binary.lua",
            1,
            100,
        ),
    }


def sample_rows(n_rows: int = 2000) -> npt.NDArray[np.float32]:
    """Real sensor rows (the sample's test part, raw scale) used as point values."""
    from training.data import load_series  # torch-free

    return load_series(SAMPLE / "test.txt.gz", max_rows=n_rows)


def fresh_ts_base() -> int:
    """A ts origin later than anything sent before (microseconds since the epoch, < 2**53)."""
    return int(time.time() * 1e6)


def http_request(method: str, url_path: str, headers: dict[str, str], body: bytes) -> bytes:
    head = [f"{method} {url_path} HTTP/1.1", "Host: 127.0.0.1"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Workload:
    """Bodies of one mode against one served model (``model`` None: the server's only model)."""

    mode: Mode
    rows: npt.NDArray[np.float32]  # [T, C] raw values
    window_length: int
    stride: int
    n_streams: int = 1000
    prefix: str = "bench-"
    model: str | None = None
    window_key: str = "window"  # JSON key of a stateless body (peers name it differently)
    window_wrap: bool = False  # stateless body as a batch of one window ([1][L][C]), for BentoML
    _row_json: list[str] = field(default_factory=list, init=False)
    _windows: list[bytes] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        # As a client sends them: the sample's own decimals, not float32's 17-digit expansions.
        as_sent = self.rows.astype(np.float64).round(6)
        self._row_json = [json.dumps(r) for r in as_sent.tolist()]
        n_windows = min(8, len(self.rows) // self.window_length)
        for w in range(n_windows):
            window = as_sent[w * self.window_length : (w + 1) * self.window_length].tolist()
            body: dict[str, object] = {self.window_key: [window] if self.window_wrap else window}
            if self.model:
                body["model"] = self.model
            self._windows.append(json.dumps(body).encode())

    # ---- bodies for the open-loop generator -------------------------------------------------------------
    def body(self, index: int, ts_base: int) -> bytes:
        mode, s = self.mode, self.n_streams
        if not mode.streaming:
            return self._windows[index % len(self._windows)]
        p = mode.points_per_request
        if mode.items_per_request > 1 and mode.content_type == BINARY_CONTENT_TYPE:
            frames = []
            for k in range(index * mode.items_per_request, (index + 1) * mode.items_per_request):
                g, r = k % s, k // s
                ts0 = ts_base + r * p
                start = (g * 7 + ts0) % (len(self.rows) - p)
                ts = np.arange(ts0, ts0 + p, dtype=np.float64)
                frames.append(
                    encode_binary(f"{self.prefix}{g}", ts, self.rows[start : start + p], self.model)
                )
            return encode_binary_batch(frames)
        if mode.items_per_request > 1:
            items = []
            for k in range(index * mode.items_per_request, (index + 1) * mode.items_per_request):
                g, r = k % s, k // s
                items.append(self._stream_json(g, ts_base + r * p, p))
            return ('{"items":[' + ",".join(items) + "]}").encode()
        g, r = index % s, index // s
        ts0 = ts_base + r * p
        if mode.content_type == BINARY_CONTENT_TYPE:
            start = (g * 7 + r * p) % (len(self.rows) - p)
            ts = np.arange(ts0, ts0 + p, dtype=np.float64)
            return encode_binary(f"{self.prefix}{g}", ts, self.rows[start : start + p], self.model)
        return self._stream_json(g, ts0, p).encode()

    def _stream_json(self, g: int, ts0: int, p: int) -> str:
        start = (g * 7 + ts0) % (len(self.rows) - p)
        points = ",".join(f'{{"ts":{ts0 + j},"values":{self._row_json[start + j]}}}' for j in range(p))
        model = f',"model":"{self.model}"' if self.model else ""
        return f'{{"stream_id":"{self.prefix}{g}","points":[{points}]{model}}}'

    def headers(self, auth: dict[str, str]) -> dict[str, str]:
        return {"Content-Type": self.mode.content_type, **auth}

    # ---- wrk ---------------------------------------------------------------------------------------------
    def wrk_script(self) -> Path:
        return WRK_DIR / self.mode.lua

    def wrk_args(self, ts_base: int, threads: int) -> list[str]:
        """Arguments after ``--`` for the mode's Lua script (data files are written once per content)."""
        mode = self.mode
        if not mode.streaming:
            return [str(self._write(self._windows[0], "window.json")), mode.path, mode.content_type]
        values = (
            self._write(np.ascontiguousarray(self.rows, dtype="<f4").tobytes(), "rows.f32")
            if mode.content_type == BINARY_CONTENT_TYPE
            else self._write(("\n".join(self._row_json) + "\n").encode(), "rows.jsonl")
        )
        return [
            str(values),
            str(mode.points_per_request),
            str(mode.items_per_request),
            str(self.n_streams),
            str(threads),
            self.prefix,
            str(ts_base),
            str(self.rows.shape[1]),
            self.model or "",
            mode.path,
        ]

    def _write(self, content: bytes, suffix: str) -> Path:
        import hashlib

        DATA_DIR.mkdir(parents=True, exist_ok=True)
        path = DATA_DIR / f"{hashlib.sha256(content).hexdigest()[:12]}-{suffix}"
        if not path.is_file():
            path.write_bytes(content)
        return path

    # ---- priming -----------------------------------------------------------------------------------------
    def prime(
        self, redis_url: str, model_name: str, ts_base: int, concurrency: int = 64, first: int = 0
    ) -> float:
        """Fill every stream's window (staggered stride phases) straight into Redis with the service's own
        ``WindowStore.append`` (the same Lua call as ``POST /score``; no scoring, so 100k streams take
        seconds). ``model_name`` binds the streams as the service would; streams below ``first`` are left
        as they are. Returns the seconds it took."""
        if not self.mode.streaming:
            return 0.0
        return asyncio.run(self._prime(redis_url, model_name, ts_base, concurrency, first))

    async def _prime(
        self, redis_url: str, model_name: str, ts_base: int, concurrency: int, first: int
    ) -> float:
        from redis.asyncio import BlockingConnectionPool, Redis

        from service.settings import Settings
        from service.windows import StreamGeometry, WindowStore

        started = time.perf_counter()
        client = Redis(
            connection_pool=BlockingConnectionPool.from_url(redis_url, max_connections=concurrency)
        )
        store = WindowStore(client, Settings.model_fields["window_ttl_s"].default)
        geometry = StreamGeometry(model_name, self.window_length, self.stride, self.rows.shape[1])
        queue: asyncio.Queue[int] = asyncio.Queue()
        for g in range(first, self.n_streams):
            queue.put_nowait(g)

        async def fill() -> None:
            while not queue.empty():
                g = queue.get_nowait()
                n = self.window_length + g % self.stride
                start = (g * 13) % (len(self.rows) - n)
                ts = np.arange(ts_base - n, ts_base, dtype=np.float64)
                values = np.ascontiguousarray(self.rows[start : start + n], dtype=np.float32)
                # A primed stream is caught up: its windows are committed as if a request had scored them.
                stream_id, token = f"{self.prefix}{g}", f"prime-{g}"
                appended = await store.append(stream_id, geometry, ts, values, token)
                if appended.windows:
                    await store.commit(stream_id, geometry, token, appended.windows[-1].end_index)

        try:
            await asyncio.gather(*(fill() for _ in range(concurrency)))
        finally:
            await client.aclose()
        return time.perf_counter() - started
