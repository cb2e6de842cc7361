"""What ``--disturbed-periods auto`` saw and chose on each SMD machine: the rates a day that thresholds calibrated
without each held-out period fired on it, for 0 and 1 periods left out (``alert_calibration.disturbed_choice``
of the bundles `bench/evaluate_smd.py` calibrated for the rows ``<family>+smooth2_blevel_disturbed_auto``).

    .venv/bin/python -m bench.disturbed_choice --family tvnet
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.manifest import Manifest  # noqa: E402

BUNDLES = ROOT / "artifacts" / "eval" / "bundles"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", default="tvnet")
    parser.add_argument("--target", type=float, default=1.0, help="the false alerts a day asked for")
    args = parser.parse_args()
    row = f"{args.family}+smooth2_blevel_disturbed_auto"
    found = sorted(BUNDLES.glob(f"*/{args.family}/{row}/manifest.json"))
    if not found:
        raise SystemExit(f"no bundle of {row}: run bench/evaluate_smd.py --families {row} first")
    print("| machine | chosen | out of period, 0 left out | out of period, 1 left out |")
    print("|---|---:|---:|---:|")
    rates: dict[int, list[float]] = {0: [], 1: []}
    chosen = 0
    for path in found:
        record = Manifest.load(path.parent).thresholds.alert_calibration
        assert record is not None and record.disturbed_choice is not None, path
        for setting in rates:
            rates[setting].append(record.disturbed_choice[str(setting)])
        chosen += record.disturbed_periods
        zero, one = record.disturbed_choice["0"], record.disturbed_choice["1"]
        print(f"| {path.parts[-4]} | {record.disturbed_periods} | {zero:.2f} | {one:.2f} |")
    print(f"\n{row}: {len(found)} machines, 1 left out on {chosen}")
    for setting, values in rates.items():
        over = sum(value > args.target for value in values)
        print(
            f"{setting} left out: out of period {min(values):.2f} to {max(values):.2f} a day, median "
            f"{statistics.median(values):.2f}; over {args.target:g} on {over} of {len(values)}"
        )


if __name__ == "__main__":
    main()
