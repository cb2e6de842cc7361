"""A probe of the garbage collector's pauses, loaded by every Python process started with this folder on
PYTHONPATH while ``GC_PROBE_DIR`` is set (``bench/gc_pauses.py`` sets both for the server it measures): each
collection's generation and duration, one line per collection, in ``$GC_PROBE_DIR/<pid>.log`` whose first line
is the process's command line."""

from __future__ import annotations

import gc
import os
import sys
import time

_DIR = os.environ.get("GC_PROBE_DIR")


def _install(folder: str) -> None:
    path = os.path.join(folder, f"{os.getpid()}.log")
    out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the process's lifetime
    out.write(" ".join(sys.argv) + "\n")
    started = [0.0]

    def probe(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            out.write(f"{info['generation']} {1000.0 * (time.perf_counter() - started[0]):.3f}\n")

    gc.callbacks.append(probe)


if _DIR:
    _install(_DIR)
