"""API processes' side of the shared inference process: one Unix socket connection per process, requests
multiplexed by id, and a :class:`RemoteBatcher` per model with the MicroBatcher's interface.

The guarantees carry across the process boundary: the inference process's bounded queue answers
``overloaded`` at once (503 here); a batch that fails fails every request in it (500 ``inference_failed``);
when the inference process dies every request it held fails with ``inference_failed`` at once, the supervisor
(``service.inference_server.InferenceProcess``) starts a new one, and the next request connects to it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path

from models.scoring import F32, WindowScores
from service.errors import InferenceFailed, Overloaded, UnknownModel, VigilError
from service.inference_wire import InferenceRequest, decode_answer, encode_request, read_frame
from service.tasks import stop_task

log = logging.getLogger(__name__)

ERRORS: dict[str, type[VigilError]] = {
    Overloaded.code: Overloaded,
    UnknownModel.code: UnknownModel,
    InferenceFailed.code: InferenceFailed,
}


class InferenceConnection:
    """The process's connection to the inference process (opened on first use, again after it drops)."""

    def __init__(self, socket_path: Path, connect_timeout_s: float = 10.0) -> None:
        self.socket_path = socket_path
        self._connect_timeout_s = connect_timeout_s
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[WindowScores]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()

    async def request(self, model: str, windows: F32) -> WindowScores:
        writer = await self._connected()
        request_id = next(self._ids)
        future: asyncio.Future[WindowScores] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            writer.write(encode_request(InferenceRequest(request_id, model, windows)))
            await writer.drain()
        except (ConnectionError, OSError) as exc:
            self._pending.pop(request_id, None)
            self._drop(InferenceFailed(f"inference process unreachable: {type(exc).__name__}"))
            raise InferenceFailed(f"inference process unreachable: {type(exc).__name__}") from exc
        return await future

    async def _connected(self) -> asyncio.StreamWriter:
        # The deadline runs from when this request asked, not from when it got the lock: while the inference
        # process is away, requests queue here one behind another, and a deadline of their own after the lock
        # made the n-th of them wait n timeouts.
        deadline = asyncio.get_running_loop().time() + self._connect_timeout_s
        async with self._connecting:
            if self._writer is not None and not self._writer.is_closing():
                return self._writer
            while True:
                try:
                    reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
                    break
                except (ConnectionError, FileNotFoundError, OSError) as exc:
                    if asyncio.get_running_loop().time() + 0.1 > deadline:
                        raise InferenceFailed(f"inference process unreachable: {type(exc).__name__}") from exc
                    await asyncio.sleep(0.1)  # it is being restarted
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read(reader))
            return writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                answer = decode_answer(await read_frame(reader))
                future = self._pending.pop(answer.id, None)
                if future is None or future.done():
                    continue
                if answer.scores is not None:
                    future.set_result(answer.scores)
                else:
                    error = ERRORS.get(answer.error_code, InferenceFailed)
                    future.set_exception(error(answer.error_detail))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as exc:
            log.error(
                "the inference process connection ended (%s); failing %d requests", exc, len(self._pending)
            )
            self._drop(InferenceFailed("inference failed: the inference process ended"))

    def _drop(self, error: VigilError) -> None:
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        if self._reader_task is not None:
            await stop_task(self._reader_task, 2.0, "inference client reader")
        self._drop(InferenceFailed("the service is stopping"))


class RemoteBatcher:
    """A model's batcher in the shared inference process, seen from an API process (MicroBatcher's interface:
    the batching itself, the bounded queue and the worker supervision happen over there)."""

    def __init__(self, name: str, connection: InferenceConnection, queue_capacity: int) -> None:
        self.name = name
        self._connection = connection
        self._capacity = queue_capacity
        self._pending = 0  # windows this process has in flight
        self.restarts = 0

    @property
    def depth(self) -> int:
        return self._pending

    def has_room(self, count: int) -> bool:
        """This process's share only; the inference process's own queue bound answers for all of them."""
        return self._pending == 0 or self._pending + count <= self._capacity

    async def submit(self, windows: F32) -> WindowScores:
        self._pending += len(windows)
        try:
            return await self._connection.request(self.name, windows)
        finally:
            self._pending -= len(windows)

    def start(self) -> None:
        return None

    def stop(self, timeout_s: float = 10.0) -> None:
        return None
