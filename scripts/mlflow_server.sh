#!/usr/bin/env bash
# An MLflow tracking server for nnlab runs: SQLite backend, listening on 127.0.0.1 only.
#
#   scripts/mlflow_server.sh [DB_FILE] [PORT]
#     DB_FILE  the SQLite store (default: $NNLAB_OUTPUT_DIR/mlflow.db or outputs/mlflow.db,
#              the file logger=mlflow writes to without a server: the server shows those runs)
#     PORT     default 5000
#   then:  MLFLOW_TRACKING_URI=http://127.0.0.1:5000 nnlab-train logger=mlflow ...
#          and open http://127.0.0.1:5000 in a browser.
# Artifacts (none unless logger.mlflow.log_model=true) go to mlartifacts/ beside the database.
# Stop it with Ctrl-C (or kill its pid).
set -euo pipefail

db="${1:-${NNLAB_OUTPUT_DIR:-outputs}/mlflow.db}"
port="${2:-5000}"
mkdir -p "$(dirname "$db")"
db="$(cd "$(dirname "$db")" && pwd)/$(basename "$db")"
artifacts="$(dirname "$db")/mlartifacts"

if command -v mlflow >/dev/null 2>&1; then
  mlflow=(mlflow)
elif "${PYTHON:-python3}" -c "import mlflow" 2>/dev/null; then
  mlflow=("${PYTHON:-python3}" -m mlflow)
else
  echo "error: mlflow is not installed; pip install 'nnlab[mlflow]'" >&2
  exit 2
fi

echo "MLflow server: http://127.0.0.1:${port}  (store sqlite:///${db})"
exec "${mlflow[@]}" server \
  --backend-store-uri "sqlite:///${db}" \
  --artifacts-destination "${artifacts}" \
  --host 127.0.0.1 --port "${port}" --workers 1
