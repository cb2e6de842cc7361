"""A TCP hop in front of a real redis-server that kills it at one exact command, for failures in the middle of
a request (between two store calls) that a kill at a random time only hits by chance."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.reliability.conftest import RedisProcess


class Tripwire:
    """Forwards every connection to ``redis``; once armed with ``arm(*needles)``, the first command chunk that
    holds every needle (e.g. a key name, or ``b"XRANGE"`` and a key) is not forwarded: the redis-server is
    SIGKILLed and every connection through the hop is closed. Later connections are refused by Redis itself."""

    def __init__(self, redis: RedisProcess) -> None:
        self._redis = redis
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._needles: tuple[bytes, ...] = ()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.tripped = threading.Event()
        threading.Thread(target=self._accept, name="tripwire", daemon=True).start()

    def arm(self, *needles: bytes) -> None:
        with self._lock:
            self._needles = needles

    def close(self) -> None:
        self._listener.close()
        self._close_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self._redis.port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()  # Redis is dead: the service sees its connection refused or reset
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._to_redis, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _to_redis(self, client: socket.socket, upstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                with self._lock:
                    needles = self._needles
                if needles and all(needle in data for needle in needles):
                    self._trip()
                    return
                upstream.sendall(data)
        self._close(client, upstream)

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        self._close(source, sink)

    def _trip(self) -> None:
        with self._lock:
            self._needles = ()
        self.tripped.set()  # before the kill: the service may answer as soon as Redis's sockets close
        self._redis.kill()
        self._close_all()

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        self._close(*sockets)

    @staticmethod
    def _close(*sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
