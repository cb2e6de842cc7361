"""Is the machine, rather than the server, stalling? Run beside a benchmark: a separate process sleeps in short
steps and reports every wake-up that came later than ``--late-ms``, and the CPU time the hypervisor stole from
this VM (``steal`` in ``/proc/stat``) over the run. A server stall with neither is the server's own.

    .venv/bin/python -m bench.stall_probe --seconds 100 &
    .venv/bin/python -m bench.service_throughput --model tvnet --strides 10 --modes d,f --fractions 0.7
"""

from __future__ import annotations

import argparse
import os
import time


def cpu_jiffies() -> tuple[int, int]:
    """(steal, busy) jiffies of all CPUs since boot: busy is user + nice + system."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    user, nice, system, steal = int(fields[1]), int(fields[2]), int(fields[3]), int(fields[8])
    return steal, user + nice + system


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--step-ms", type=float, default=5.0, help="sleep between wake-ups")
    parser.add_argument("--late-ms", type=float, default=50.0, help="report wake-ups later than this")
    args = parser.parse_args()
    hz = os.sysconf("SC_CLK_TCK")
    steal0, busy0 = cpu_jiffies()
    started = previous = time.monotonic()
    late: list[tuple[float, float]] = []
    steal_at: list[tuple[float, int]] = []
    last_steal = steal0
    while previous - started < args.seconds:
        time.sleep(args.step_ms / 1000)
        now = time.monotonic()
        if (now - previous) * 1000 - args.step_ms > args.late_ms:
            late.append((now - started, (now - previous) * 1000))
        steal, _ = cpu_jiffies()
        if steal != last_steal:
            steal_at.append((now - started, steal - last_steal))
            last_steal = steal
        previous = now
    steal1, busy1 = cpu_jiffies()
    print(
        f"{args.seconds:g} s: steal {1000 * (steal1 - steal0) / hz:.0f} ms of CPU, busy "
        f"{(busy1 - busy0) / hz:.1f} CPU-s; wake-ups more than {args.late_ms:g} ms late: {len(late)}"
    )
    for at, gap in late:
        print(f"  late at {at:7.2f} s: woke after {gap:.0f} ms")
    for at, jiffies in steal_at:
        print(f"  steal at {at:7.2f} s: {1000 * jiffies / hz:.0f} ms")


if __name__ == "__main__":
    main()
