"""Bounds on a request's head (request line and header lines), enforced in uvicorn's HTTP protocol.

Neither parser bounds a head well by itself: httptools (uvicorn's default here) joins the pieces of a header
value with ``bytes +=``, quadratic in its length (one 128 MiB header took 22 s to reach its 401 and held the
event loop for seconds at a time), and h11 answers a head over its buffer size with a bare 400. These
subclasses count each head's bytes and lines as they arrive, before the parser sees them, and answer
``431 Request Header Fields Too Large`` (``{"code": "headers_too_large", …}``) and close when a head is over
``VIGIL_MAX_HEADER_BYTES`` (32 KiB) or has more than ``MAX_HEADERS`` (100) header lines. Every request of a
keep-alive connection gets its own budget. One known slack: bytes of a pipelined request that arrive in the
same read as the end of the body before it are not counted (at most one read, 256 KiB; reading pauses while
a request is pipelined). The app never sees these requests: they are logged, not counted in the metrics.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from service.errors import HeadersTooLarge, error_body

log = logging.getLogger("uvicorn.error")

MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100
LINGER_S = 2.0  # after a 431, what the client still sends is read and dropped this long, so that closing
# with unread bytes does not reset the connection before the client has read the answer
_BLANK_LINES = (b"\n\r\n", b"\n\n")  # the end of a head (h11 also accepts bare line feeds)


class HeadBudget:
    """The bytes and line feeds seen so far of the head now arriving, against the bounds."""

    def __init__(self, max_bytes: int, max_headers: int) -> None:
        self.max_bytes = max_bytes
        self.max_lines = max_headers + 2  # the request line and the blank line end the head too
        self.reset()

    def reset(self) -> None:
        self.n_bytes = 0
        self.n_lines = 0
        self._tail = b""  # the last bytes counted: a blank line may be split across reads

    def take(self, data: bytes) -> int:
        """Counts the part of ``data`` that belongs to the head and returns its length: up to and including
        the blank line that ends the head, or all of ``data``."""
        end = len(data)
        edge = self._tail + data[:2]
        for blank in _BLANK_LINES:
            at = edge.find(blank)
            if at != -1 and at + len(blank) > len(self._tail):
                end = min(end, at + len(blank) - len(self._tail))
            at = data.find(blank, 0, end)  # only before the end found so far: a body follows the head
            if at != -1:
                end = min(end, at + len(blank))
        self.n_bytes += end
        self.n_lines += data.count(b"\n", 0, end)
        self._tail = (self._tail + data[max(0, end - 2) : end])[-2:]
        return end

    @property
    def exceeded(self) -> str | None:
        """Why the head is refused, or None."""
        if self.n_bytes > self.max_bytes:
            return f"request head: over {self.max_bytes} bytes"
        if self.n_lines > self.max_lines:
            return f"request head: more than {self.max_lines - 2} header lines"
        return None


class HeadLimit(asyncio.Protocol):
    """The counting shared by both parsers; a subclass says whether the parser is reading a head."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    server_state: ServerState
    client: tuple[str, int] | None
    head: HeadBudget
    refused: bool

    def _reading_head(self) -> bool:
        raise NotImplementedError

    def _fed(self) -> None:
        """Called after the parser took a piece of a head."""

    def _answer_pending(self) -> bool:
        """Whether an earlier request on this connection still waits for its answer."""
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        while data and not self.refused:
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # a parse error closed it, or it became a WebSocket
            if not self._reading_head():
                super().data_received(data)
                return
            end = self.head.take(data)
            reason = self.head.exceeded
            if reason is not None:
                self._refuse(reason)
                return
            super().data_received(data[:end] if end < len(data) else data)
            self._fed()
            data = data[end:]

    def _refuse(self, reason: str) -> None:
        self.refused = True
        peer = f"{self.client[0]}:{self.client[1]}" if self.client else "client"
        log.warning("%s - %s: answered 431 and closed", peer, reason)
        if self._answer_pending():  # a 431 now would arrive before that answer
            self.transport.close()
            return
        body = orjson.dumps(error_body(HeadersTooLarge.code, reason))
        head = [b"HTTP/1.1 431 Request Header Fields Too Large\r\n"]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def max_header_bytes(config: Config) -> int:
    """The bound on a head's bytes: uvicorn's own knob for it (``h11_max_incomplete_event_size``, which
    ``vigil serve`` sets from ``VIGIL_MAX_HEADER_BYTES``), honoured here by both parsers."""
    return config.h11_max_incomplete_event_size or MAX_HEADER_BYTES


class HeadLimitedHttpTools(HeadLimit, HttpToolsProtocol):
    """uvicorn's httptools protocol with :class:`HeadBudget` bounds."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.head = HeadBudget(max_header_bytes(config), MAX_HEADERS)
        self.refused = False
        self._in_head = True

    def _reading_head(self) -> bool:
        return self._in_head

    def _answer_pending(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._in_head = False
        self.head.reset()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True


class HeadLimitedH11(HeadLimit, H11Protocol):
    """uvicorn's h11 protocol with :class:`HeadBudget` bounds. h11's own buffer bound is set above the head
    bound, so that the answer over it is this 431, not h11's 400."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limit = max_header_bytes(config)
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limit + 64 * 1024)
        self.head = HeadBudget(limit, MAX_HEADERS)
        self.refused = False

    def _reading_head(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _fed(self) -> None:
        if self.conn.their_state is not h11.IDLE:  # the head is complete (or h11 refused it)
            self.head.reset()

    def _answer_pending(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete


# What ``vigil serve`` passes as uvicorn's ``http=`` (by name, so that ``--workers`` processes import it):
# the httptools protocol when httptools is installed, as uvicorn's "auto" does, else h11.
HeadLimitedAuto: type[HeadLimit]
try:
    import httptools  # noqa: F401
except ImportError:  # pragma: no cover - httptools comes with uvicorn[standard]
    HeadLimitedAuto = HeadLimitedH11
else:
    HeadLimitedAuto = HeadLimitedHttpTools
