#!/usr/bin/env bash
# Installs everything Vigil needs on a fresh Debian machine with Python 3.11: system packages (redis-server,
# python3-venv, prometheus, prometheus-alertmanager, …) when missing, then a virtualenv in .venv with torch
# (CPU build, pinned) and the project.
# Idempotent: a second run only checks. Sourced or run by deploy/demo.sh and tests/run.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
EXTRAS="${VIGIL_EXTRAS:-train,dev}"

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
command -v wrk >/dev/null 2>&1 || apt_packages+=(wrk)  # load generator of the benchmarks and the slow overload test
command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)  # the live view's browser test
# The reverse proxy's tests (nginx -t, nginx in front of vigil serve); nginx is in /usr/sbin.
PATH="$PATH:/usr/sbin" command -v nginx >/dev/null 2>&1 || apt_packages+=(nginx-light)
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  apt_packages+=(prometheus)
fi
# Alert delivery tests and deploy/stack.py (a real Alertmanager; amtool checks its config).
if ! command -v prometheus-alertmanager >/dev/null 2>&1 || ! command -v amtool >/dev/null 2>&1; then
  apt_packages+=(prometheus-alertmanager)
fi
# The Prometheus source tests: a real node_exporter scraped by a real Prometheus.
command -v prometheus-node-exporter >/dev/null 2>&1 || apt_packages+=(prometheus-node-exporter)
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then apt_packages+=(python3-venv); fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
  echo "setup: installing ${apt_packages[*]} with apt-get"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.vigil-installed-$(cat pyproject.toml | sha256sum | cut -c1-16)-${EXTRAS//,/-}"
if [ ! -f "$stamp" ]; then
  echo "setup: installing torch 2.13.0 (CPU) and vigil[$EXTRAS] into .venv"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -m pip install -q -e ".[$EXTRAS]" 2>&1 | grep -v "is ignored" || true
  .venv/bin/python -c "import torch, onnxruntime, redis, fastapi" # fails loudly if an install did not land
  rm -f .venv/.vigil-installed-*
  touch "$stamp"
fi
