#!/usr/bin/env bash
# The test command: sets up (deploy/setup.sh) and runs the whole test suite against a real redis-server
# started by the test session (or VIGIL_TEST_REDIS_URL) and real ONNX Runtime sessions.
# Extra arguments go to pytest, e.g. `bash tests/run.sh -m slow` for the slow suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/deploy/setup.sh"
cd "$ROOT"
exec .venv/bin/python -m pytest "$@"
