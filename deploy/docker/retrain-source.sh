#!/bin/sh
# The compose `source-trainer` (profile source), a retraining job: trains a model on this host's node_exporter
# metrics from the stack's Prometheus (vigil train --prometheus --preset node-exporter), writes it into the
# models volume and hot-reloads it into vigil (POST /admin/models/reload, with VIGIL_RELOAD_API_KEY: a key with
# the admin role); vigil then polls the same queries every step. Then it retrains on the latest RETRAIN_RANGE
# every RETRAIN_INTERVAL seconds; a version whose sensors differ is refused by the reload (and logged here).
# Until Prometheus holds enough history (a window of rows in both the training and the validation part:
# SOURCE_WINDOW / 0.2 rows of SOURCE_STEP, about 50 min with the defaults) training fails and is retried.
# The same command runs from cron on any host with `vigil` installed.
set -u
prometheus="${PROMETHEUS_URL:-http://prometheus:9090}"
vigil="${VIGIL_URL:-http://vigil:8000}"
name="${SOURCE_MODEL_NAME:-node}"
interval="${RETRAIN_INTERVAL:-86400}"
while true; do
  if vigil train --prometheus "$prometheus" --preset "${SOURCE_PRESET:-node-exporter}" \
      --step "${SOURCE_STEP:-15s}" --range "${RETRAIN_RANGE:-7d}" --window "${SOURCE_WINDOW:-40}" \
      --stride "${SOURCE_STRIDE:-10}" --name "$name" --out "${VIGIL_MODELS_DIR:-/models}" --quiet \
      --reload-url "$vigil"; then
    echo "source-trainer: $name trained and reloaded; next in $interval s"
    sleep "$interval"
  else
    echo "source-trainer: training $name failed (see above; too little history yet?); again in 300 s"
    sleep 300
  fi
done
