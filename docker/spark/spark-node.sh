#!/usr/bin/env bash
# Entry point of the ncf Spark image: one standalone master or worker, in the foreground.
#
#   spark-node.sh master                          # SPARK_MASTER_HOST, SPARK_MASTER_PORT (7077)
#   spark-node.sh worker [spark://HOST:PORT]      # default $SPARK_MASTER_URL
#
# Spark comes from the pyspark wheel (the same 4.2.0 the Airflow image submits with), so
# driver, executors and Python workers all run one Spark and one Python version.
# Workers size themselves from SPARK_WORKER_CORES / SPARK_WORKER_MEMORY (Spark reads them).
set -euo pipefail

role="${1:-}"
[ "$#" -gt 0 ] && shift

case "$role" in
  master)
    exec spark-class org.apache.spark.deploy.master.Master \
      --host "${SPARK_MASTER_HOST:-$(hostname)}" \
      --port "${SPARK_MASTER_PORT:-7077}" \
      --webui-port "${SPARK_MASTER_WEBUI_PORT:-8080}" "$@"
    ;;
  worker)
    master_url="${1:-${SPARK_MASTER_URL:-}}"
    [ "$#" -gt 0 ] && shift
    if [ -z "$master_url" ]; then
      echo "spark-node.sh worker: give the master URL (spark://HOST:PORT) or set SPARK_MASTER_URL" >&2
      exit 2
    fi
    exec spark-class org.apache.spark.deploy.worker.Worker \
      --webui-port "${SPARK_WORKER_WEBUI_PORT:-8081}" "$@" "$master_url"
    ;;
  *)
    echo "usage: spark-node.sh master | worker [spark://HOST:PORT]" >&2
    exit 2
    ;;
esac
