#!/usr/bin/env bash
# The whole pipeline on the embedded default (DuckDB), from a fresh checkout:
# install, load the bundled FUNSD forms into the app's tables, build the dataset
# views with dbt, train a model and print the metrics it wrote to the database.
# Run it again to add another run (the model's next version).
#
# Settings come from the environment (see README): TRAINER_DUCKDB_PATH,
# TRAINER_ARTIFACTS_URL. The demo always uses the duckdb target.

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$ROOT"
export TRAINER_TARGET=duckdb

echo "==> Creating the app's tables and the results tables"
python -m trainer init-db

echo "==> Loading the FUNSD demo forms into the app's tables"
python -m trainer load-demo

echo "==> Building the dataset views with dbt (tests on the app's tables may warn: the demo has dirt on purpose)"
dbt build --profiles-dir profiles --target duckdb --log-level warn
python - <<'PY'
import duckdb, os
path = os.environ.get("TRAINER_DUCKDB_PATH", "warehouse.duckdb")
with duckdb.connect(path, read_only=True) as connection:
    print("datasets.dataset_summary:")
    for split, label, examples, documents in connection.execute(
        "select split, label, examples, documents from datasets.dataset_summary order by split desc, label"
    ).fetchall():
        print(f"  {split:<5}  {label:<9} {examples:>6} examples in {documents:>3} documents")
PY

echo "==> Training"
python -m trainer train

echo
echo "Done. The DuckDB file holds the app's tables, the datasets views and the results:"
echo "  python -m trainer runs                      # every run"
echo "  .venv/bin/python -c \"import duckdb; print(duckdb.connect('${TRAINER_DUCKDB_PATH:-warehouse.duckdb}', read_only=True).sql('select * from datasets.training_examples limit 5'))\""
