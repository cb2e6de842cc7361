#!/usr/bin/env bash
# The run command: sets up, trains a TVNet on the bundled SMD sample, starts the service (with its own
# redis-server when none is configured or reachable), replays the sample's test part through POST /score,
# and leaves the service running with its URL printed. Ctrl-C stops it.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/deploy/setup.sh"
cd "$ROOT"
MODELS_DIR="${VIGIL_MODELS_DIR:-artifacts/models}"
PORT="${VIGIL_PORT:-8000}"
SAMPLE=data/smd-machine-1-2
export VIGIL_MODELS_DIR="$MODELS_DIR"

if [ -z "$(ls -d "$MODELS_DIR"/tvnet/*/ 2>/dev/null)" ]; then
  echo "== training TVNet on $SAMPLE/train.txt.gz"
  .venv/bin/vigil train --model tvnet --train "$SAMPLE/train.txt.gz" --out "$MODELS_DIR"
else
  echo "== using the bundle already in $MODELS_DIR/tvnet (delete it to retrain)"
fi
BUNDLE="$(ls -d "$MODELS_DIR"/tvnet/*/ | sort | tail -n 1)"
echo "== offline evaluation of $BUNDLE on the untouched test part"
.venv/bin/vigil evaluate --bundle "$BUNDLE" --test "$SAMPLE/test.txt.gz" --labels "$SAMPLE/test_label.txt.gz" \
  --interpretation "$SAMPLE/interpretation_label.txt"

if [ -z "${VIGIL_API_KEYS:-}" ]; then
  DEMO_KEY="$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(24))')"
  export VIGIL_API_KEYS="[{\"name\": \"demo\", \"key\": \"$DEMO_KEY\", \"roles\": [\"score\", \"read\", \"admin\"]}]"
else
  DEMO_KEY="${VIGIL_DEMO_KEY:?set VIGIL_DEMO_KEY to a key from VIGIL_API_KEYS for the replay}"
fi

echo "== starting the service on port $PORT"
VIGIL_LOG_LEVEL="${VIGIL_LOG_LEVEL:-warning}" .venv/bin/vigil serve --models-dir "$MODELS_DIR" --port "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null' EXIT INT TERM
ready() { .venv/bin/python -c "import httpx, sys; sys.exit(httpx.get('http://127.0.0.1:$PORT/readyz').status_code != 200)" 2>/dev/null; }
for _ in $(seq 1 120); do
  ready && break
  kill -0 $SERVER 2>/dev/null || { echo "the service exited"; exit 1; }
  sleep 0.5
done
ready || { echo "the service did not become ready"; exit 1; }

# A stream of its own for each run: a Redis that outlives the service (the system's, or a previous run's)
# still holds an earlier run's points, and the same timestamps again would be refused as duplicates.
STREAM="demo-machine-1-2-$(date -u +%Y%m%dT%H%M%SZ)"
echo "== replaying $SAMPLE/test.txt.gz through POST /score as stream $STREAM"
.venv/bin/vigil replay --url "http://127.0.0.1:$PORT" --stream-id "$STREAM" \
  --data "$SAMPLE/test.txt.gz" --chunk 50 --quiet --api-key "$DEMO_KEY"
echo
echo "Vigil is running at http://127.0.0.1:$PORT  (API docs: http://127.0.0.1:$PORT/docs, metrics: /metrics)"
echo "API key for this run (roles score, read, admin): $DEMO_KEY"
echo "  e.g. curl -H 'Authorization: Bearer $DEMO_KEY' http://127.0.0.1:$PORT/streams/$STREAM"
echo "Press Ctrl-C to stop."
wait $SERVER
