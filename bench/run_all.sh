#!/usr/bin/env bash
# Every benchmark behind BENCHMARKS.md, one after the other, on a quiet machine (about 50 minutes).
#
#     bash bench/run_all.sh            # REPEAT=2 by default; REPEAT=3 bash bench/run_all.sh for more runs
#
# Each script prints its tables and saves raw JSON under artifacts/bench/results/; this wrapper also keeps
# each script's full output in artifacts/bench/logs/<name>.log. Needs wrk (apt-get install -y wrk) and, for
# the BentoML peer, /tmp/bentoml-venv (see bench/README.md).
set -uo pipefail
cd "$(dirname "$0")/.."
repeat="${REPEAT:-2}"
logs=artifacts/bench/logs
mkdir -p "$logs"
command -v wrk >/dev/null || { echo "run_all: wrk not found: apt-get install -y wrk" >&2; exit 1; }

status=0
run() {
    local name="$1"
    shift
    echo "=== $name: .venv/bin/python -m $* ($(date -u +%H:%M:%S))"
    if ! .venv/bin/python -m "$@" >"$logs/$name.log" 2>&1; then
        echo "=== $name FAILED: see $logs/$name.log" >&2
        status=1
    fi
}

run model_throughput bench.model_throughput --repeat "$repeat"
run service_tvnet bench.service_throughput --model tvnet --strides 10,1 --repeat "$repeat"
run service_pca bench.service_throughput --model pca --modes c,e --repeat "$repeat"
run peers bench.peers --model tvnet --repeat "$repeat"
run cost_growth bench.cost_growth --model tvnet --sizes 1000,10000,100000
run soak bench.soak --minutes 10
echo "=== done ($(date -u +%H:%M:%S))"
exit "$status"
