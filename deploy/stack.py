"""Local stand-in for the compose stack, for machines without Docker.

Starts ``redis-server`` (AOF everysec, loopback) unless ``--redis-url`` names a Redis, Alertmanager (Debian's
``prometheus-alertmanager``) with deploy/alertmanager/alertmanager.yml, ``vigil serve`` delivering its alerts
there, and Prometheus (Debian's ``prometheus``) with deploy/prometheus/prometheus.yml rendered for local
targets, the repository's rule files and that Alertmanager; prints the URLs and stops every child on Ctrl-C or
SIGTERM. ``--replay`` also streams
the demo test set into the service once Prometheus scrapes it. Grafana is not started (Debian ships no
package): use ``docker compose up grafana`` or point a Grafana at the printed Prometheus URL.

    .venv/bin/python deploy/stack.py --models-dir artifacts/models [--replay]

Vigil settings come from the environment as usual (``VIGIL_PROVIDER=cpu``, ``VIGIL_API_KEYS`` …; give the
replay a key with ``--replay-api-key`` when authentication is on). Children run in their own
session, so Ctrl-C reaches only this script, which stops them in order (replay, Prometheus, vigil,
Alertmanager, Redis); on
Linux they also get SIGTERM should this script die without cleaning up.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import yaml

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DEMO_TEST_DATA = ROOT / "data" / "smd-machine-1-2" / "test.txt.gz"
INSTALL_HINT = "install it with: apt-get install -y prometheus  (deploy/setup.sh does it)"
DEBIAN_SERVICES = {9090: "prometheus", 9093: "prometheus-alertmanager"}  # their packages start them
ALERTMANAGER_HINT = "install it with: apt-get install -y prometheus-alertmanager  (deploy/setup.sh does it)"


def say(message: str, stream: TextIO | None = None) -> None:
    """One line to the terminal (a CLI's output, not a log record)."""
    out = stream or sys.stdout
    out.write(message + "\n")
    out.flush()


class StackError(RuntimeError):
    """A child failed to start or died; the message carries the tail of its log."""


class Stopped(Exception):
    """SIGTERM received: stop like on Ctrl-C."""


def render_prometheus_config(
    vigil_target: str, prometheus_target: str, interval: str, alertmanager_target: str | None = None
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with local scrape targets, absolute rule paths, ``interval`` as the
    scrape and rule-evaluation interval (e.g. ``"5s"``) and the rules' alerts sent to ``alertmanager_target``
    (none: no alerting section)."""
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    if alertmanager_target is None:
        config.pop("alerting", None)
    else:
        config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager_target]}]}]
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(PROMETHEUS_DIR / pattern) for pattern in config["rule_files"]]
    targets = {"vigil": vigil_target, "prometheus": prometheus_target}
    # Compose service discovery; here every target is known. Jobs of compose profiles (node) have none here.
    config["scrape_configs"] = [job for job in config["scrape_configs"] if job["job_name"] in targets]
    for job in config["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


def require_binary(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise StackError(f"{name} not found on PATH; {hint}")
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_port_free(host: str, port: int, flag: str) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            service = DEBIAN_SERVICES.get(port)
            raise StackError(
                f"{host}:{port} is in use ({exc.strerror}); choose another with {flag}"
                + (f" (or stop Debian's {service} service: systemctl stop {service})" if service else "")
            ) from exc


def http_ok(url: str, timeout_s: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def prometheus_scraped(prometheus_url: str, job: str) -> bool:
    """True once Prometheus holds a successful scrape (``up == 1``) of ``job``."""
    query = urllib.parse.urlencode({"query": f'up{{job="{job}"}} == 1'})
    try:
        with urllib.request.urlopen(f"{prometheus_url}/api/v1/query?{query}", timeout=1.0) as response:
            return bool(json.load(response)["data"]["result"])
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return False


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM when the parent dies (Linux), so no child outlives the stack."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Stack:
    """The child processes, each logging to ``<state_dir>/<name>.log``; stopped in reverse start order."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(
        self, name: str, argv: list[str], log: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        output = (self.state_dir / f"{name}.log").open("ab") if log else None
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT if log else None,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        if output is not None:
            output.close()  # the child holds its own descriptor
        self.children.append((name, proc))
        return proc

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.state_dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def wait_until(
        self, what: str, check: Callable[[], bool], proc: subprocess.Popen[bytes], name: str, timeout_s: float
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with code {proc.returncode}:\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise StackError(f"{what}: not after {timeout_s:.0f} s:\n{self.log_tail(name)}")
            time.sleep(0.1)

    def stop(self, timeout_s: float = 15.0) -> None:
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    say(f"stack: {name} ignored SIGTERM for {timeout_s:.0f} s; killing it")
                    proc.kill()
                    proc.wait()


def start_redis(stack: Stack) -> str:
    binary = require_binary("redis-server", "install it with: apt-get install -y redis-server")
    port = free_port()
    data_dir = stack.state_dir / "redis"
    data_dir.mkdir(exist_ok=True)
    proc = stack.start(
        "redis",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
        ],
    )
    stack.wait_until("redis-server answering PING", lambda: redis_answers(port), proc, "redis", 10)
    return f"redis://127.0.0.1:{port}/0"


def start_alertmanager(stack: Stack, args: argparse.Namespace) -> str:
    """deploy/alertmanager/alertmanager.yml as is (its receivers are placeholders that deliver nowhere: the
    alerts show in Alertmanager's UI and API); gossip off, so it needs no second port."""
    binary = shutil.which("prometheus-alertmanager") or require_binary("alertmanager", ALERTMANAGER_HINT)
    url = f"http://127.0.0.1:{args.alertmanager_port}"
    proc = stack.start(
        "alertmanager",
        [
            binary,
            f"--config.file={ALERTMANAGER_CONFIG}",
            f"--storage.path={stack.state_dir / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{args.alertmanager_port}",
            f"--web.external-url={url}",
            "--cluster.listen-address=",
        ],
    )
    stack.wait_until(
        f"alertmanager ready at {url}", lambda: http_ok(f"{url}/-/ready"), proc, "alertmanager", 30
    )
    return url


def start_vigil(stack: Stack, args: argparse.Namespace, redis_url: str, alertmanager_url: str) -> str:
    url = f"http://{args.host}:{args.port}"
    env = dict(os.environ)
    env.setdefault("VIGIL_ALERTMANAGER__URLS", json.dumps([alertmanager_url]))
    env.setdefault("VIGIL_PUBLIC_URL", url)
    proc = stack.start(
        "vigil",
        [
            sys.executable,
            "-m",
            "service.cli",
            "serve",
            "--models-dir",
            str(args.models_dir),
            "--redis-url",
            redis_url,
            "--host",
            args.host,
            "--port",
            str(args.port),
        ],
        env=env,
    )
    stack.wait_until(f"vigil ready at {url}/readyz", lambda: http_ok(f"{url}/readyz"), proc, "vigil", 120)
    return url


def start_prometheus(stack: Stack, args: argparse.Namespace) -> str:
    binary = require_binary("prometheus", INSTALL_HINT)
    config = render_prometheus_config(
        f"{args.host}:{args.port}",
        f"127.0.0.1:{args.prometheus_port}",
        args.scrape_interval,
        f"127.0.0.1:{args.alertmanager_port}",
    )
    config_path = stack.state_dir / "prometheus.yml"
    config_path.write_text(
        "# Rendered by deploy/stack.py from deploy/prometheus/prometheus.yml; edits are overwritten.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    promtool = shutil.which("promtool")
    if promtool is not None:
        check = subprocess.run(
            [promtool, "check", "config", str(config_path)], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise StackError(f"rendered {config_path} is invalid:\n{check.stdout}{check.stderr}")
    url = f"http://127.0.0.1:{args.prometheus_port}"
    proc = stack.start(
        "prometheus",
        [
            binary,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={stack.state_dir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{args.prometheus_port}",
            "--storage.tsdb.retention.time=2d",
        ],
    )
    stack.wait_until(f"prometheus ready at {url}", lambda: http_ok(f"{url}/-/ready"), proc, "prometheus", 60)
    return url


def start_replay(stack: Stack, args: argparse.Namespace, vigil_url: str) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "service.cli",
        "replay",
        "--url",
        vigil_url,
        "--stream-id",
        args.replay_stream_id,
        "--data",
        str(args.replay_data),
        "--chunk",
        str(args.replay_chunk),
        "--quiet",
    ]
    if args.replay_rate > 0:
        argv += ["--rate", str(args.replay_rate)]
    if args.replay_api_key:
        argv += ["--api-key", args.replay_api_key]
    return stack.start("replay", argv, log=False)  # alerts and the summary go to this terminal


def run(args: argparse.Namespace, stack: Stack) -> int:
    ensure_port_free(args.host, args.port, "--port")
    ensure_port_free("127.0.0.1", args.prometheus_port, "--prometheus-port")
    ensure_port_free("127.0.0.1", args.alertmanager_port, "--alertmanager-port")
    redis_url = args.redis_url or start_redis(stack)
    alertmanager_url = start_alertmanager(stack, args)
    vigil_url = start_vigil(stack, args, redis_url, alertmanager_url)
    prometheus_url = start_prometheus(stack, args)
    say(
        f"Vigil stack up (logs and data in {stack.state_dir}):\n"
        f"  vigil       {vigil_url}  (API docs /docs, metrics /metrics, readiness /readyz)\n"
        f"  prometheus  {prometheus_url}  (graph /graph, rules /rules, alerts /alerts, targets /targets)\n"
        f"  alertmanager {alertmanager_url}  (Vigil's anomaly alerts and the rules' alerts; silences)\n"
        f"  redis       {redis_url}\n"
        "  grafana     not part of the local stand-in: docker compose up grafana, or a Grafana of your own\n"
        f"              with a Prometheus datasource of uid vigil-prometheus at {prometheus_url}\n"
        "Ctrl-C stops everything."
    )
    replay: subprocess.Popen[bytes] | None = None
    if args.replay:
        # Wait for a scrape first, so that the dashboard's rates see the replay from its first point.
        vigil_proc = dict(stack.children)["vigil"]
        stack.wait_until(
            "a first scrape of vigil",
            lambda: prometheus_scraped(prometheus_url, "vigil"),
            dict(stack.children)["prometheus"],
            "prometheus",
            60,
        )
        if vigil_proc.poll() is None:
            replay = start_replay(stack, args, vigil_url)
    while True:
        for name, proc in stack.children:
            if name != "replay" and proc.poll() is not None:
                raise StackError(f"{name} exited with code {proc.returncode}:\n{stack.log_tail(name)}")
        if replay is not None and replay.poll() is not None:
            say(f"stack: replay finished (exit code {replay.returncode}); still serving, Ctrl-C stops")
            replay = None
        time.sleep(0.5)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models-dir", type=Path, required=True, help="bundles, <name>/<version>/ (vigil train --out)"
    )
    parser.add_argument("--redis-url", default=None, help="use this Redis instead of starting a redis-server")
    parser.add_argument("--host", default="127.0.0.1", help="vigil listen address")
    parser.add_argument("--port", type=int, default=8000, help="vigil port")
    parser.add_argument("--prometheus-port", type=int, default=9090)
    parser.add_argument("--alertmanager-port", type=int, default=9093)
    parser.add_argument(
        "--scrape-interval", default="5s", help="Prometheus scrape and rule-evaluation interval"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=ROOT / "runs" / "stack",
        help="logs, Redis AOF, TSDB, Alertmanager's silences",
    )
    parser.add_argument("--replay", action="store_true", help="stream --replay-data into vigil once scraped")
    parser.add_argument("--replay-data", type=Path, default=DEMO_TEST_DATA)
    parser.add_argument("--replay-rate", type=float, default=100.0, help="points/s; 0: as fast as possible")
    parser.add_argument("--replay-chunk", type=int, default=50, help="points per request")
    parser.add_argument("--replay-stream-id", default="demo-machine-1-2")
    parser.add_argument(
        "--replay-api-key", default=None, help="bearer key with the score role, when auth is on"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.models_dir.is_dir():
        say(f"stack: no models directory {args.models_dir}; train one with vigil train --out DIR", sys.stderr)
        return 2
    args.models_dir = args.models_dir.resolve()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(args.state_dir.resolve())

    def on_sigterm(signum: int, frame: object) -> None:
        raise Stopped

    signal.signal(signal.SIGTERM, on_sigterm)
    # A background job of a non-interactive shell starts with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: Ctrl-C (or a supervisor's SIGINT) would leave the stack running. Take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return run(args, stack)
    except (KeyboardInterrupt, Stopped):
        say("\nstack: stopping")
        return 0
    except StackError as exc:
        say(f"stack: {exc}", sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
