#!/usr/bin/env bash
# The MLflow tracking server that every task of a sweep logs to. Runs, parameters, metrics and the
# model registry live in PostgreSQL: many machines write at once, which sqlite does not survive.
# Artifacts (images, models, samples) are proxied: tasks upload them through the server to
# --artifacts-destination, so they need no credentials of their own for it and lose nothing with
# their scratch disks.
#
#   MLFLOW_BACKEND_STORE_URI=postgresql+psycopg://mlflow:<password>@db.example.com:5432/mlflow \
#   MLFLOW_ARTIFACTS_DESTINATION=s3://my-bucket/mlflow-artifacts \
#       cluster/mlflow_server.sh [more mlflow server options, e.g. --allowed-hosts mlflow.example.com:5000]
#
# Its environment needs the PostgreSQL driver the URI names: psycopg (3) for postgresql+psycopg://
# (`pip install 'psycopg[binary]'`, in the project's dev extra), psycopg2 for postgresql+psycopg2://;
# plain postgresql:// takes SQLAlchemy's default (psycopg from SQLAlchemy 2.1, psycopg2 before). And
# boto3 for an s3:// destination. Listens on 0.0.0.0:5000; options given here win (--port 8080).
# Tasks then set MLFLOW_TRACKING_URI=http://<this host>:5000. MLflow accepts requests for localhost and
# private addresses only: name the host:port the tasks use with --allowed-hosts.
set -euo pipefail

fail() { echo "mlflow_server.sh: $*" >&2; exit 1; }

case "${MLFLOW_BACKEND_STORE_URI:-}" in
    postgresql://* | postgresql+*://*) ;;
    "") fail "set MLFLOW_BACKEND_STORE_URI=postgresql://user:password@host:5432/database" ;;
    *) fail "MLFLOW_BACKEND_STORE_URI must be a postgresql:// database shared by the machines, not ${MLFLOW_BACKEND_STORE_URI%%:*}" ;;
esac
[ -n "${MLFLOW_ARTIFACTS_DESTINATION:-}" ] ||
    fail "set MLFLOW_ARTIFACTS_DESTINATION (a folder of this machine, or s3://bucket/path)"
# the driver SQLAlchemy loads for this URI, checked here: MLflow says it in a traceback
python -c 'import os, sqlalchemy; sqlalchemy.make_url(os.environ["MLFLOW_BACKEND_STORE_URI"]).get_dialect().import_dbapi()' \
    2>/dev/null || fail "this environment has no driver for ${MLFLOW_BACKEND_STORE_URI%%:*}://" \
        "(psycopg: pip install 'psycopg[binary]'; psycopg2: pip install psycopg2-binary)"

exec mlflow server --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" --host 0.0.0.0 --port 5000 "$@"
