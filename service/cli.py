"""The ``vigil`` command: ``serve`` and ``replay`` here; more commands from installed packages.

Packages add commands through the entry point group ``vigil.commands`` (a function taking the subparsers):
``training`` adds train, evaluate, calibrate and backtest. So the service depends on nothing of the training
package, the serving image can leave it (and torch) out, and ``vigil serve`` never imports it: the other
commands are only looked up when the one asked for is not built in.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path

BUILT_IN = ("serve", "replay")
# Commands a package may add, named so that a missing package is a clear message rather than "invalid choice".
KNOWN_ELSEWHERE = {name: "vigil[train]" for name in ("train", "evaluate", "calibrate", "backtest")}
Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _serve(args: argparse.Namespace) -> int:
    from service.server import run_server

    return run_server(args.models_dir, args.redis_url, args.host, args.port, args.workers)


def _replay(args: argparse.Namespace) -> int:
    from service.replay import replay

    return replay(
        url=args.url,
        stream_id=args.stream_id,
        data=args.data,
        rate=args.rate,
        chunk=args.chunk,
        model=args.model,
        api_key=args.api_key,
        quiet=args.quiet,
        start_ts=args.start_ts,
    )


def plugins() -> list[tuple[str, Register]]:
    """The commands other installed packages add (a package whose module is missing is skipped)."""
    found = []
    for entry in entry_points(group="vigil.commands"):
        try:
            found.append((entry.name, entry.load()))
        except ImportError:
            continue
    return found


def build_parser(with_plugins: bool = True) -> tuple[argparse.ArgumentParser, set[str]]:
    """The ``vigil`` parser and the commands it knows."""
    parser = argparse.ArgumentParser(prog="vigil", description="Streaming anomaly detection for sensor data")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the scoring service")
    serve.add_argument("--models-dir", type=Path, default=None)
    serve.add_argument("--redis-url", default=None, help="a Redis URL, or 'local' for a private redis-server")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument(
        "--workers", type=int, default=None, help="uvicorn worker processes (metrics aggregate)"
    )
    serve.set_defaults(func=_serve, run=None)

    replay = sub.add_parser("replay", help="stream a series into POST /score and print alerts")
    replay.add_argument("--url", required=True)
    replay.add_argument("--stream-id", required=True)
    replay.add_argument("--data", type=Path, required=True)
    replay.add_argument(
        "--rate", type=float, default=None, help="points per second (default: as fast as possible)"
    )
    replay.add_argument("--chunk", type=int, default=10, help="points per request")
    replay.add_argument(
        "--start-ts", type=float, default=0.0, help="ts of the first row (row i is sent at start-ts + i)"
    )
    replay.add_argument("--model", default=None)
    replay.add_argument("--api-key", default=None)
    replay.add_argument("--quiet", action="store_true", help="print only alerts and the summary")
    replay.set_defaults(func=_replay, run=None)

    if with_plugins:
        for _, register in plugins():
            register(sub)
    return parser, set(sub.choices)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    arguments = sys.argv[1:] if argv is None else argv
    command = next((a for a in arguments if not a.startswith("-")), None)
    built_in = command in BUILT_IN
    parser, commands = build_parser(with_plugins=not built_in)
    if command in KNOWN_ELSEWHERE and command not in commands:
        sys.stderr.write(f"vigil {command}: not installed here; it comes with {KNOWN_ELSEWHERE[command]}\n")
        return 2
    args = parser.parse_args(arguments)
    if getattr(args, "run", None) is None:
        return int(args.func(args))
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
