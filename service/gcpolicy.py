"""What Python's cyclic garbage collector scans while the service runs.

A full (generation 2) collection walks every tracked object of the process. After start-up that is mostly what
start-up built and never frees (FastAPI's routes and schemas, pydantic models, ONNX Runtime sessions' wrappers,
numpy, redis and uvicorn modules), and each walk held the event loop 50-90 ms (p50 67 ms), one every 2-3 s at
about 110 binary requests/s (``bench/gc_pauses.py``, 2026-12-06): a stall that every request in progress waits
out. ``gc.freeze()`` moves what exists at the end of start-up into a permanent generation
that collections skip, so a full collection walks only what requests allocated since (the ``gc.freeze``
documentation's own use: objects that live as long as the process). A frozen object is still freed when
nothing refers to it; only a frozen reference cycle is never reclaimed. So only start-up's objects are frozen,
never what a request creates; a model version loaded at start-up and later replaced by a hot reload is freed
when its last reference goes, and versions loaded by a reload are not frozen."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger("vigil.gc")


def freeze_startup_objects() -> int:
    """Collects once, then freezes what is left; returns how many objects are frozen now."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("garbage collector: %d start-up objects frozen (full collections skip them)", frozen)
    return frozen
