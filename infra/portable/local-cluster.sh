#!/usr/bin/env bash
# The topology of a Flink or Spark cluster with worker-pool sidecars, on this machine: Beam's job
# service and Beam's SDK worker pool as separate processes on loopback. Then submit with
#   python -m benchmark_builder build ... --runner PortableRunner \
#     --job_endpoint=localhost:$JOB_PORT --environment_type=EXTERNAL --environment_config=localhost:$POOL_PORT
# (or just `--runner PortableRunner --environment_type=EXTERNAL`: the build starts both itself).
# Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
JOB_PORT=${JOB_PORT:-8099}
POOL_PORT=${POOL_PORT:-50000}
# the pool starts SDK harness processes with the `python` on PATH: the project's venv must come first
export PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"
"$PY" -m apache_beam.runners.worker.worker_pool_main --service_port "$POOL_PORT" &
POOL=$!
"$PY" -m apache_beam.runners.portability.local_job_service_main --port "$JOB_PORT" &
JOB=$!
trap 'kill $POOL $JOB 2>/dev/null; wait' INT TERM EXIT
echo "job service localhost:$JOB_PORT, worker pool localhost:$POOL_PORT"
echo "submit with: --runner PortableRunner --job_endpoint=localhost:$JOB_PORT --environment_type=EXTERNAL --environment_config=localhost:$POOL_PORT"
wait
