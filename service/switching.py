"""How soon the inference thread gets the interpreter back from the event loop.

The inference worker releases the interpreter lock for every ONNX Runtime run and for numpy's larger loops in
the scoring pass, then must take it back. While the event loop's thread is busy with Python work, a thread
waiting for the lock gets it only when the holder is asked to drop it, after the switch interval (CPython's
default 5 ms); a batch that gives the lock up and takes it back a dozen times waits that long each time. On
these 2 cores a 20-window batch took 7 ms alone and 16-174 ms (p50) beside a busy Python thread at 5 ms, 9 ms
at 0.2 ms (``bench/gil_switch.py``). A shorter interval costs the busy thread only when another thread is
actually waiting: the drop is requested then, never otherwise."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("vigil.switching")


def set_switch_interval(interval_ms: float | None) -> float:
    """Sets the interpreter's switch interval (None: leave it); returns the interval in force, in ms."""
    if interval_ms is not None:
        sys.setswitchinterval(interval_ms / 1000.0)
        log.info("interpreter switch interval %.3g ms", interval_ms)
    return sys.getswitchinterval() * 1000.0
