#!/usr/bin/env bash
# Start Beam's Flink job server from a staged jar (see infra/README.md).
set -euo pipefail
JAR=${JAR:-jars/beam-runners-flink-1.18-job-server-2.77.0.jar}
FLINK_MASTER=${FLINK_MASTER:-localhost:8081}
[ -f "$JAR" ] || { echo "job-server jar $JAR not found: stage it first (infra/README.md)" >&2; exit 1; }
exec java -jar "$JAR" --flink-master="$FLINK_MASTER" --job-port=8099 --artifact-port=8098 --expansion-port=8097
