"""The frames between API processes and the shared inference process (a Unix socket; little-endian).

Every frame is ``uint32 length`` then its payload.
- request: ``uint64 id, uint16 model length, model (UTF-8), uint32 n, uint32 L, uint32 C`` then ``n*L*C`` float32
  windows (normalised);
- answer: ``uint64 id, uint8 0, uint32 n, uint32 L, uint32 C`` then ``n*L`` float32 scores and ``n*L*C``
  float32 contributions; or ``uint64 id, uint8 1`` then a JSON ``{"code", "detail"}`` error.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass

import numpy as np

from models.scoring import F32, WindowScores

_LENGTH = struct.Struct("<I")
_REQUEST = struct.Struct("<QH")
_SHAPE = struct.Struct("<III")
_ANSWER = struct.Struct("<QB")
MAX_FRAME_BYTES = 1 << 31


@dataclass(frozen=True)
class InferenceRequest:
    id: int
    model: str
    windows: F32  # [n, L, C]


@dataclass(frozen=True)
class InferenceAnswer:
    id: int
    scores: WindowScores | None
    error_code: str = ""
    error_detail: str = ""


def encode_request(request: InferenceRequest) -> bytes:
    model = request.model.encode()
    windows = np.ascontiguousarray(request.windows, dtype="<f4")
    payload = _REQUEST.pack(request.id, len(model)) + model + _SHAPE.pack(*windows.shape) + windows.tobytes()
    return _LENGTH.pack(len(payload)) + payload


def decode_request(payload: bytes) -> InferenceRequest:
    request_id, model_length = _REQUEST.unpack_from(payload)
    offset = _REQUEST.size
    model = payload[offset : offset + model_length].decode()
    offset += model_length
    n, length, channels = _SHAPE.unpack_from(payload, offset)
    offset += _SHAPE.size
    windows = np.frombuffer(payload, dtype="<f4", count=n * length * channels, offset=offset)
    return InferenceRequest(request_id, model, windows.reshape(n, length, channels))


def encode_answer(answer: InferenceAnswer) -> bytes:
    if answer.scores is None:
        body = json.dumps({"code": answer.error_code, "detail": answer.error_detail}).encode()
        payload = _ANSWER.pack(answer.id, 1) + body
    else:
        contributions = np.ascontiguousarray(answer.scores.contributions, dtype="<f4")
        scores = np.ascontiguousarray(answer.scores.scores, dtype="<f4")
        payload = _ANSWER.pack(answer.id, 0) + _SHAPE.pack(*contributions.shape) + scores.tobytes()
        payload += contributions.tobytes()
    return _LENGTH.pack(len(payload)) + payload


def decode_answer(payload: bytes) -> InferenceAnswer:
    answer_id, status = _ANSWER.unpack_from(payload)
    offset = _ANSWER.size
    if status:
        error = json.loads(payload[offset:])
        return InferenceAnswer(answer_id, None, str(error["code"]), str(error["detail"]))
    n, length, channels = _SHAPE.unpack_from(payload, offset)
    offset += _SHAPE.size
    scores = np.frombuffer(payload, dtype="<f4", count=n * length, offset=offset).reshape(n, length)
    offset += n * length * 4
    contributions = np.frombuffer(payload, dtype="<f4", count=n * length * channels, offset=offset)
    return InferenceAnswer(answer_id, WindowScores(scores, contributions.reshape(n, length, channels)))


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """One frame's payload; raises ``asyncio.IncompleteReadError`` at the end of the stream."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"inference frame of {length} bytes")
    return await reader.readexactly(length)
