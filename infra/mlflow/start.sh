#!/usr/bin/env bash
# Start dfd's MLflow tracking server (UI + REST API + model registry) on this machine only.
#
#   infra/mlflow/start.sh FOLDER            # e.g. infra/mlflow/start.sh ~/dfd-mlflow
#   MLFLOW_PORT=5077 infra/mlflow/start.sh <scratch-folder>
#
# FOLDER holds everything the server keeps:
#   FOLDER/mlflow.db      SQLite backend: experiments, runs, params, metrics, tags and the model registry
#   FOLDER/mlartifacts/   artifacts (sample grids, per-image metric tables, checkpoints, registered generators),
#                         uploaded and downloaded through this server (--serve-artifacts is MLflow's default), so
#                         clients need no access to the folder itself.
# Then point dfd at it:  export MLFLOW_TRACKING_URI=http://127.0.0.1:${MLFLOW_PORT:-5000}
# Stop it with Ctrl-C (it runs in the foreground; exec makes the server this script's process).
#
# Environment: MLFLOW_PORT (default 5000), MLFLOW_WORKERS (uvicorn workers, default 1: ~0.5 GB in all;
# each extra worker adds ~0.25 GB), MLFLOW (the mlflow command, default: .venv/bin/mlflow of this checkout
# when present, else mlflow on PATH). See infra/mlflow/README.md for PostgreSQL, S3 and serving beyond localhost.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 FOLDER   (the server's SQLite database and artifacts go there)" >&2
    exit 2
fi

folder=$(mkdir -p "$1" && cd "$1" && pwd)          # absolute: sqlite:/// needs an absolute path
port=${MLFLOW_PORT:-5000}
workers=${MLFLOW_WORKERS:-1}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
mlflow=${MLFLOW:-$([[ -x "$repo/.venv/bin/mlflow" ]] && echo "$repo/.venv/bin/mlflow" || echo mlflow)}
mkdir -p "$folder/mlartifacts"

# MLflow 3.17 otherwise starts a job-execution backend too: 9 processes (~2.3 GB) instead of 2.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
# This process is the server, not a client of another one.
unset MLFLOW_TRACKING_URI

echo "MLflow UI and API on http://127.0.0.1:$port (data in $folder); Ctrl-C stops it" >&2
# --host 127.0.0.1: reachable from this machine only (see the README before binding 0.0.0.0).
# --backend-store-uri: runs and the model registry (the registry uses the same store unless --registry-store-uri).
# --artifacts-destination: where the proxied artifacts live; new experiments get mlflow-artifacts:/ locations.
exec "$mlflow" server \
    --host 127.0.0.1 \
    --port "$port" \
    --workers "$workers" \
    --backend-store-uri "sqlite:///$folder/mlflow.db" \
    --serve-artifacts \
    --artifacts-destination "$folder/mlartifacts"
