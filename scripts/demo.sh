#!/usr/bin/env bash
# The whole pipeline from a fresh checkout: install, load the bundled FUNSD forms
# into the app's tables, build the dataset views with dbt, train a model and print
# the metrics it wrote to the database; then close the loop: the model proposes
# labels for the pending segments, the demo plays the app's reviewers, and the
# proposals' acceptance prints beside the eval precision. Run it again to add
# another run (the model's next version, trained on what reviewers accepted).
#
#   scripts/demo.sh                     # DuckDB, the embedded default (warehouse.duckdb)
#   scripts/demo.sh --target postgres   # PostgreSQL from PGHOST/PGPORT/PGUSER/PGPASSWORD;
#                                       # PGDATABASE (default training_db_pipeline_demo)
#                                       # is created when it does not exist
#
# Other settings come from the environment (see README): TRAINER_DUCKDB_PATH,
# TRAINER_ARTIFACTS_URL.

set -euo pipefail

target=duckdb
while [ $# -gt 0 ]; do
    case "$1" in
        --target) target="${2:-}"; shift 2 ;;
        --target=*) target="${1#--target=}"; shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "scripts/demo.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
    esac
done
case "$target" in
    duckdb|postgres) ;;
    *) echo "scripts/demo.sh: --target must be duckdb or postgres, not '$target'" >&2; exit 2 ;;
esac

source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
export TRAINER_TARGET="$target"

if [ "$target" = postgres ]; then
    export PGDATABASE="${PGDATABASE:-training_db_pipeline_demo}"
    python - <<'PY'
import os, psycopg
from psycopg import sql
name = os.environ["PGDATABASE"]
with psycopg.connect(dbname="postgres", autocommit=True) as connection:
    if not connection.execute("select 1 from pg_database where datname = %s", (name,)).fetchone():
        connection.execute(sql.SQL("create database {} template template0 encoding 'UTF8'").format(sql.Identifier(name)))
        print(f"==> Created PostgreSQL database {name}")
PY
fi

echo "==> Creating the app's tables and the results tables"
python -m trainer init-db --with-app-tables

echo "==> Loading the FUNSD demo forms into the app's tables"
python -m trainer load-demo

echo "==> Building the dataset views with dbt (tests on the app's tables may warn: the demo has dirt on purpose)"
dbt build --profiles-dir profiles --target "$target" --log-level warn
python - <<'PY'
from trainer.core.db import Database
from trainer.core.settings import Settings
with Database(Settings.from_env()).session() as session:
    print("datasets.dataset_summary:")
    for split, label, examples, documents in session.fetchall(
        "select split, label, examples, documents from datasets.dataset_summary order by split desc, label"
    ):
        print(f"  {split:<5}  {label:<9} {examples:>6} examples in {documents:>3} documents")
PY

echo "==> Training"
python -m trainer train

echo
echo "==> The model proposes labels for the app's pending segments (training.proposals)"
python -m trainer propose

echo
echo "==> Playing the app: it shows the proposals to reviewers (proposed events), who answer from the forms' true labels"
python -m trainer demo-reviews
dbt build --profiles-dir profiles --target "$target" --log-level warn \
    --select live_segments review_queue review_queue_documents proposal_outcomes proposal_acceptance
python -m trainer acceptance

echo
echo "==> The run's report (confusion matrix, per-label figures, risk-coverage, label issues, in the field)"
python -m trainer report latest

echo
echo "Done. The database holds the app's tables (app), the dataset views (datasets) and the results (training):"
echo "  .venv/bin/python -m trainer runs --target $target"
echo "  .venv/bin/python -m trainer show model segment-labeler latest --target $target   # lineage down to the snapshot"
if [ "$target" = duckdb ]; then
    # Attached under the trainer's catalog name, so any file name works (USER_GUIDE §5).
    echo "  .venv/bin/python -c \"import duckdb; c = duckdb.connect(); c.execute(\\\"attach '${TRAINER_DUCKDB_PATH:-warehouse.duckdb}' as warehouse (read_only)\\\"); print(c.sql('select * from warehouse.datasets.training_examples limit 5'))\""
else
    echo "  psql -c 'select * from datasets.training_examples limit 5'   # with PGDATABASE=$PGDATABASE"
fi
