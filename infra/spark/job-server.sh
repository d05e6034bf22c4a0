#!/usr/bin/env bash
# Start Beam's Spark job server from a staged jar (see infra/README.md).
set -euo pipefail
JAR=${JAR:-jars/beam-runners-spark-3-job-server-2.77.0.jar}
SPARK_MASTER=${SPARK_MASTER:-spark://localhost:7077}
[ -f "$JAR" ] || { echo "job-server jar $JAR not found: stage it first (infra/README.md)" >&2; exit 1; }
exec java -jar "$JAR" --spark-master-url="$SPARK_MASTER" --job-port=8099 --artifact-port=8098 --expansion-port=8097
