"""Request bodies → arrays: JSON stream mode, JSON stateless windows, and the compact binary frame.

Binary frame (``Content-Type: application/x-vigil-points``), little-endian::

    magic      4 bytes  b"VGL1"
    id_len     uint16   then stream_id, UTF-8 (1-128 bytes of [A-Za-z0-9._:-])
    model_len  uint16   then model name, UTF-8 (0 = none named: the only model loaded; with several, a 404 asks for one)
    n_points   uint32
    n_features uint16
    ts         n_points × float64
    values     n_points × n_features × float32, row-major

Batch frame (``POST /score/batch`` with the same content type), little-endian: many streams' frames in one body::

    magic      4 bytes  b"VGLB"
    n_items    uint32
    n_items ×  (frame_len uint32, then one VGL1 frame of frame_len bytes)

Each item is checked on its own, as in JSON batches: a bad frame fails that item only (its error names
``items.<i>``); a batch whose framing is broken (magic, lengths) is refused whole.
"""

from __future__ import annotations

import itertools
import re
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from service.errors import BadInput, PayloadTooLarge, UnsupportedMediaType
from service.schemas import STREAM_ID_PATTERN, BatchScoreRequest, StreamScoreRequest, WindowScoreRequest

BINARY_CONTENT_TYPE = "application/x-vigil-points"
JSON_CONTENT_TYPE = "application/json"
MAGIC = b"VGL1"
BATCH_MAGIC = b"VGLB"
_STREAM_ID = re.compile(STREAM_ID_PATTERN)
_MODEL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class PointBatch:
    """Points of one stream: ``ts`` [n] float64, ``values`` [n, C] float64, or the rows as sent when they differ
    in length (the scorer names the first row whose length is not the model's sensor count)."""

    stream_id: str
    model: str | None
    ts: npt.NDArray[np.float64]
    values: npt.NDArray[np.float64] | list[list[float]]


@dataclass(frozen=True)
class BadItem:
    """An item of a batch that failed validation: its error, and its stream when the item names a valid one
    (the items of that stream after it are then refused: see ``StreamScorer.score_many``)."""

    error: BadInput
    stream_id: str | None = None


@dataclass(frozen=True)
class WindowInput:
    model: str | None
    window: npt.NDArray[np.float64]  # [L, C]


def media_type(header: str | None, accepted: tuple[str, ...]) -> str:
    """The ``Content-Type`` without parameters (JSON when absent); one not in ``accepted`` raises
    :class:`UnsupportedMediaType` (415)."""
    kind = (header or JSON_CONTENT_TYPE).split(";")[0].strip().lower()
    if kind not in accepted:
        raise UnsupportedMediaType(f"content-type: {kind!r} is not accepted; use {' or '.join(accepted)}")
    return kind


def body_encoding(header: str | None) -> str:
    """``identity`` or ``gzip`` from ``Content-Encoding`` (what gateways send); any other coding, or a list of
    codings, raises :class:`UnsupportedMediaType` (415) before the body is read."""
    coding = (header or "identity").strip().lower()
    if coding in ("", "identity"):
        return "identity"
    if coding in ("gzip", "x-gzip"):
        return "gzip"
    raise UnsupportedMediaType(f"content-encoding: {coding!r} is not accepted; send gzip or no encoding")


# Concatenated gzip members are valid gzip (RFC 1952), and clients rarely send more than one; each member's
# leftover input is copied, so a body of many empty members costs time quadratic in its size (a review found
# seconds of a worker thread for a few MiB). Beyond this many the body is refused.
MAX_GZIP_MEMBERS = 64


def decode_body(body: bytes, coding: str, max_bytes: int) -> bytes:
    """The body as it was before ``coding`` (see :func:`body_encoding`). A gzip body is decompressed to at most
    ``max_bytes``: more raises :class:`PayloadTooLarge` however small the compressed body (a gzip bomb stops
    there); a corrupt or truncated one raises :class:`BadInput`. Concatenated gzip members are joined, up to
    ``MAX_GZIP_MEMBERS``."""
    if coding == "identity":
        return body
    out = bytearray()
    rest = body
    for _ in range(MAX_GZIP_MEMBERS):
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += member.decompress(rest, max_bytes + 1 - len(out))  # max_length 0 would mean no bound
        except zlib.error as exc:
            raise BadInput(f"body: invalid gzip data ({exc})") from exc
        if len(out) > max_bytes:
            raise PayloadTooLarge(f"body: larger than {max_bytes} bytes once decompressed")
        if not member.eof:
            raise BadInput("body: truncated gzip data")
        rest = member.unused_data  # a copy of what follows: many members would cost their square
        if not rest:
            return bytes(out)
    raise BadInput(f"body: more than {MAX_GZIP_MEMBERS} concatenated gzip members")


# Each error pydantic itemises costs ~5 µs in one call that holds the GIL: a body of 200 000 unknown keys took
# over a second to describe, the event loop waiting. Beyond this many the errors are counted, not itemised.
MAX_ITEMISED_ERRORS = 100


def validation_error(exc: ValidationError, prefix: str = "") -> BadInput:
    count = exc.error_count()
    if count > MAX_ITEMISED_ERRORS:
        where = prefix.rstrip(".") or "body"
        return BadInput(
            f"{where}: {count} validation errors (unknown keys, wrong types or values); at most "
            f"{MAX_ITEMISED_ERRORS} are itemised",
            error_count=count,
        )
    errors = [
        {"field": prefix + (".".join(str(p) for p in err["loc"]) or "body"), "reason": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    first = errors[0]
    return BadInput(f"{first['field']}: {first['reason']}", errors=errors)


def _validate(model: type[BaseModel], raw: Any, prefix: str = "") -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(exc, prefix) from exc


def load_json(body: bytes) -> Any:
    """Parse JSON; NaN/Infinity tokens parse so that validation can name the field that holds them. orjson
    parses first (1.7x faster than pydantic-core's parser on a 100x38 window: ``bench.parse_cost``); what it refuses (NaN and
    Infinity tokens, numbers that overflow a double, invalid UTF-8, bad JSON) goes to pydantic-core, which
    parses non-finite numbers for validation to name, and words the errors."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return from_json(body, allow_inf_nan=True)
    except ValueError as exc:
        raise BadInput(f"body: invalid JSON ({exc})") from exc


_WINDOW_KEYS = frozenset(("window", "model"))
_NUMERIC_BYTES = b"0123456789.eE+-,[] \t\r\n"  # what JSON numbers in nested arrays are written with


def numeric_window(raw: dict[str, Any], body: bytes) -> WindowInput | None:
    """The stateless window without pydantic, when the body shows that validation cannot fail on a field:
    only the keys ``window`` and ``model``, a valid model name or none, and the body without the bytes that
    write numbers and arrays is exactly the same body with an empty window (so the window holds nothing
    else: no string, ``true``, ``false``, ``null``, object, NaN or Infinity token), the rows forming a
    non-empty ``[L][C]`` array of finite values. Anything else returns None and takes the validated path,
    which names the field and the reason: this skips work, never an answer. One C pass over the body
    (``bytes.translate``) makes the check; with it a 100x38 window is read in 166 µs against the validated
    path's 275 (``bench.parse_cost``)."""
    if not raw.keys() <= _WINDOW_KEYS:
        return None
    model = raw.get("model")
    if model is not None and not (isinstance(model, str) and _MODEL.fullmatch(model)):
        return None
    skeleton = orjson.dumps({key: [] if key == "window" else value for key, value in raw.items()})
    if body.translate(None, _NUMERIC_BYTES) != skeleton.translate(None, _NUMERIC_BYTES):
        return None
    window = _rows_array(raw["window"])
    if window is None or window.shape[0] == 0 or not np.isfinite(window).all():
        return None
    return WindowInput(model, window)


def _rows_array(rows: Any) -> npt.NDArray[np.float64] | None:
    """``rows`` as a ``[L][C]`` float64 array, or None when they are not a list of equally long lists of numbers
    (the validated path words why). One ``np.fromiter`` over the chained rows: 80 µs against 95 for ``np.asarray``
    of the nested lists, which walks them once to find the shape before converting (100x38, ``bench.parse_cost``)."""
    if not isinstance(rows, list):
        return None
    try:
        widths = set(map(len, rows))
        if len(widths) > 1:
            return None
        width = widths.pop() if widths else 0
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=len(rows) * width)
    except (TypeError, ValueError, OverflowError):
        return None  # a row that is a number, an element that is a list
    return flat.reshape(len(rows), width)


def stream_batch(request: StreamScoreRequest) -> PointBatch:
    ts = np.fromiter((p.ts for p in request.points), dtype=np.float64, count=len(request.points))
    rows = [p.values for p in request.points]
    if len({len(r) for r in rows}) > 1:
        return PointBatch(request.stream_id, request.model, ts, rows)
    return PointBatch(request.stream_id, request.model, ts, np.asarray(rows, dtype=np.float64))


def parse_score_json(body: bytes) -> PointBatch | WindowInput:
    raw = load_json(body)
    if isinstance(raw, dict) and "window" in raw:
        return numeric_window(raw, body) or validated_window(raw)
    return stream_batch(_validate(StreamScoreRequest, raw))


def validated_window(raw: Any) -> WindowInput:
    """The stateless window through its wire model: the reference for :func:`numeric_window`."""
    request = _validate(WindowScoreRequest, raw)
    widths = {len(row) for row in request.window}
    if len(widths) != 1:
        raise BadInput("window: every row needs the same number of values")
    return WindowInput(request.model, np.asarray(request.window, dtype=np.float64))


def parse_batch_json(body: bytes, max_items: int) -> list[PointBatch | BadItem]:
    """Each item validated on its own: a bad item fails that item only (and the items of its stream after it)."""
    raw = load_json(body)
    if not isinstance(raw, dict) or not isinstance(raw.get("items"), list) or set(raw) != {"items"}:
        _validate(BatchScoreRequest, raw)  # raises with the field and the reason
        raise BadInput("items: expected a list of stream-mode bodies")
    items = raw["items"]
    if not items:
        raise BadInput("items: at least one item is required")
    if len(items) > max_items:
        raise PayloadTooLarge(f"items: {len(items)} items in one request; at most {max_items}")
    out: list[PointBatch | BadItem] = []
    for i, item in enumerate(items):
        try:
            out.append(stream_batch(_validate(StreamScoreRequest, item, prefix=f"items.{i}.")))
        except BadInput as exc:
            out.append(BadItem(exc, _named_stream(item)))
    return out


def _named_stream(item: Any) -> str | None:
    """The valid ``stream_id`` of a raw item that failed validation for another reason, else None."""
    stream_id = item.get("stream_id") if isinstance(item, dict) else None
    return stream_id if isinstance(stream_id, str) and _STREAM_ID.fullmatch(stream_id) else None


def encode_binary_batch(frames: list[bytes]) -> bytes:
    """The client side of the batch frame: ``frames`` are :func:`encode_binary` frames, one per item."""
    parts = [BATCH_MAGIC, struct.pack("<I", len(frames))]
    for frame in frames:
        parts += [struct.pack("<I", len(frame)), frame]
    return b"".join(parts)


def parse_binary_batch(body: bytes, max_items: int) -> list[PointBatch | BadItem]:
    """The items of a batch frame; a bad item is its :class:`BadInput`, named ``items.<i>.…``."""
    if body[:4] != BATCH_MAGIC:
        raise BadInput("body: a binary batch must start with b'VGLB'")
    try:
        (n_items,) = struct.unpack_from("<I", body, 4)
    except struct.error as exc:
        raise BadInput(f"body: truncated binary batch header ({exc})") from exc
    if n_items == 0:
        raise BadInput("items: at least one item is required")
    if n_items > max_items:
        raise PayloadTooLarge(f"items: {n_items} items in one request; at most {max_items}")
    out: list[PointBatch | BadItem] = []
    offset = 8
    for i in range(n_items):
        if offset + 4 > len(body):
            raise BadInput(f"body: the batch announces {n_items} items and ends after {i}")
        (length,) = struct.unpack_from("<I", body, offset)
        frame = body[offset + 4 : offset + 4 + length]
        if len(frame) != length:
            raise BadInput(f"items.{i}: the frame announces {length} bytes, {len(frame)} follow")
        offset += 4 + length
        try:
            out.append(parse_binary(frame))
        except BadInput as exc:
            out.append(BadItem(BadInput(f"items.{i}.{exc.detail}"), _frame_stream(frame)))
    if offset != len(body):
        raise BadInput(f"body: {len(body) - offset} bytes after the last of {n_items} items")
    return out


def encode_binary(
    stream_id: str, ts: npt.ArrayLike, values: npt.ArrayLike, model: str | None = None
) -> bytes:
    """The client side of the binary frame (used by tests, the replay tool and the benchmarks)."""
    ts_array = np.ascontiguousarray(ts, dtype="<f8")
    value_array = np.ascontiguousarray(values, dtype="<f4")
    sid, name = stream_id.encode(), (model or "").encode()
    header = MAGIC + struct.pack("<H", len(sid)) + sid + struct.pack("<H", len(name)) + name
    header += struct.pack("<IH", len(ts_array), value_array.shape[1])
    return header + ts_array.tobytes() + value_array.tobytes()


def _frame_stream(frame: bytes) -> str | None:
    """The valid stream id at the head of a ``VGL1`` frame that failed for another reason, else None."""
    try:
        (id_len,) = struct.unpack_from("<H", frame, 4)
        stream_id = frame[6 : 6 + id_len].decode()
    except (struct.error, UnicodeDecodeError):
        return None
    return stream_id if frame[:4] == MAGIC and _STREAM_ID.fullmatch(stream_id) else None


def parse_binary(body: bytes) -> PointBatch:
    try:
        if body[:4] != MAGIC:
            raise BadInput("body: binary frame must start with b'VGL1'")
        offset = 4
        (id_len,) = struct.unpack_from("<H", body, offset)
        stream_id = body[offset + 2 : offset + 2 + id_len].decode()
        offset += 2 + id_len
        (model_len,) = struct.unpack_from("<H", body, offset)
        model = body[offset + 2 : offset + 2 + model_len].decode() or None
        offset += 2 + model_len
        n_points, n_features = struct.unpack_from("<IH", body, offset)
        offset += 6
    except (struct.error, UnicodeDecodeError) as exc:
        raise BadInput(f"body: truncated or malformed binary header ({exc})") from exc
    # fullmatch: with ``match``, ``$`` also matches before a trailing newline ("a\n" would pass).
    if not _STREAM_ID.fullmatch(stream_id):
        raise BadInput("stream_id: must be 1-128 characters of [A-Za-z0-9._:-]")
    if model is not None and not _MODEL.fullmatch(model):
        raise BadInput("model: must be 1-64 characters of [A-Za-z0-9._-]")
    if n_points == 0:
        raise BadInput("points: at least one point is required")
    expected = offset + n_points * 8 + n_points * n_features * 4
    if len(body) != expected:
        raise BadInput(f"body: {len(body)} bytes, the header announces {expected}")
    ts = np.frombuffer(body, dtype="<f8", count=n_points, offset=offset).astype(np.float64)
    values = np.frombuffer(body, dtype="<f4", count=n_points * n_features, offset=offset + n_points * 8)
    return PointBatch(stream_id, model, ts, values.reshape(n_points, n_features).astype(np.float64))
