"""`python -m trainer` as a user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import csv

import pytest
from conftest import TRAINED_DOCUMENTS, demo_subset, prepared_workspace

from trainer.data.demo import build_demo_data, read_segments

COMMANDS = ("init-db", "load-demo", "train", "request", "worker", "reap", "predict", "runs", "metrics")


def test_help_lists_every_command_and_the_settings(duckdb_workspace):
    workspace = duckdb_workspace
    result = workspace.trainer("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout
    for variable in ("TRAINER_TARGET", "TRAINER_DUCKDB_PATH", "TRAINER_ARTIFACTS_URL", "PGHOST"):
        assert variable in result.stdout
    for command in COMMANDS:
        sub = workspace.trainer(command, "--help")
        assert sub.returncode == 0 and "Usage:" in sub.stdout


def test_init_db_creates_named_constraints_and_is_idempotent(duckdb_workspace):
    workspace = duckdb_workspace
    first = workspace.trainer("init-db")
    assert first.returncode == 0, first.stderr
    assert "app.documents, app.annotations, app.annotation_events" in first.stdout
    second = workspace.trainer("init-db")
    assert second.returncode == 0
    assert "App tables: present" in second.stdout and "up to date" in second.stdout

    tables = set(workspace.query("select schema_name, table_name from duckdb_tables()"))
    for table in ("documents", "annotations", "annotation_events"):
        assert ("app", table) in tables
    for table in ("training_runs", "model_versions", "metrics"):
        assert ("training", table) in tables
    constraints = {
        (table, kind)
        for table, kind in workspace.query(
            "select table_name, constraint_type from duckdb_constraints() where schema_name = 'training'"
        )
    }
    assert {("training_runs", "PRIMARY KEY"), ("training_runs", "CHECK"), ("model_versions", "FOREIGN KEY"),
            ("model_versions", "UNIQUE"), ("metrics", "FOREIGN KEY")} <= constraints
    names = {name for (name,) in workspace.query(
        "select constraint_name from information_schema.table_constraints where table_schema = 'training'")}
    assert {"training_runs_run_id_pkey", "training_runs_status_check", "model_versions_run_id_run_id_fkey",
            "model_versions_model_name_version_key"} <= names

    import duckdb

    with duckdb.connect(str(workspace.duckdb_path)) as connection:
        with pytest.raises(duckdb.ConstraintException, match="status"):
            connection.execute(
                "insert into training.training_runs (model_name, status, created_at, params) "
                "values ('m', 'paused', now(), '{}')"
            )


def test_load_demo_twice_inserts_nothing_the_second_time(workspace):
    first = workspace.trainer("load-demo")
    assert first.returncode == 0, first.stderr
    counts = workspace.query(
        "select (select count(*) from app.documents), (select count(*) from app.annotations), "
        "(select count(*) from app.annotation_events)"
    )[0]
    data = build_demo_data(read_segments())
    assert counts == (data.documents.num_rows, data.annotations.num_rows, data.annotation_events.num_rows)
    second = workspace.trainer("load-demo")
    assert second.returncode == 0
    assert second.stdout.count(": 0 inserted") == 3
    assert workspace.query(
        "select (select count(*) from app.documents), (select count(*) from app.annotations), "
        "(select count(*) from app.annotation_events)"
    )[0] == counts


def test_init_db_on_postgres_leaves_the_apps_tables_to_the_app(postgres_workspace):
    workspace = postgres_workspace
    first = workspace.trainer("init-db")
    assert first.returncode == 0, first.stderr
    assert "App tables missing in schema app: documents, annotations, annotation_events" in first.stdout
    assert "applied migration(s) 1, 2, 3" in first.stdout
    schemas = {name for (name,) in workspace.query("select schema_name from information_schema.schemata")}
    assert "training" in schemas and "app" not in schemas
    names = {name for (name,) in workspace.query(
        "select constraint_name from information_schema.table_constraints where table_schema = 'training'")}
    assert {"training_runs_run_id_pkey", "training_runs_status_check", "model_versions_run_id_run_id_fkey",
            "model_versions_model_name_version_key", "metrics_run_id_run_id_fkey"} <= names

    second = workspace.trainer("init-db", "--with-app-tables")
    assert second.returncode == 0, second.stderr
    assert "App tables created: app.documents, app.annotations, app.annotation_events" in second.stdout
    assert "Results schema: up to date" in second.stdout
    assert workspace.query("select version from training.schema_migrations order by version") == [
        (1,), (2,), (3,), (4,), (5,), (6,), (7,), (8,)
    ]


def test_init_db_applies_only_the_missing_migrations(workspace):
    from trainer.results.store import MIGRATIONS, ResultsStore

    database = workspace.database()
    store = ResultsStore(database)
    all_migrations = list(MIGRATIONS)
    try:
        MIGRATIONS[:] = all_migrations[:1]
        with database.session(create=True) as session:
            assert store.migrate(session) == [1]
    finally:
        MIGRATIONS[:] = all_migrations
    result = workspace.trainer("init-db", "--with-app-tables")
    assert result.returncode == 0, result.stderr
    assert "applied migration(s) 2, 3" in result.stdout
    columns = {name for (name,) in workspace.query(
        "select column_name from information_schema.columns where table_schema = 'training' and table_name = 'training_runs'")}
    assert {"heartbeat_at", "worker", "snapshot_uri", "snapshot_sha256", "dataset_summary", "dataset_as_of"} <= columns


def test_a_newer_results_schema_is_refused(workspace):
    assert workspace.trainer("init-db", "--with-app-tables").returncode == 0
    workspace.execute_script(
        "insert into training.schema_migrations (version, name, applied_at) values (99, 'from the future', '2027-01-01')"
    )
    result = workspace.trainer("train")
    assert result.returncode == 1
    assert "migration(s) [99] that this trainer does not know" in result.stderr


def test_an_unreachable_postgres_fails_in_one_line(duckdb_workspace):
    result = duckdb_workspace.trainer("train", "--target", "postgres", PGHOST="127.0.0.1", PGPORT="1", PGDATABASE="none")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Error: cannot connect to PostgreSQL database none on 127.0.0.1:1: ")


def test_train_without_a_database_fails_in_one_line(duckdb_workspace):
    workspace = duckdb_workspace
    result = workspace.trainer("train")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"Error: DuckDB file {workspace.duckdb_path} does not exist: run `python -m trainer init-db` (or set TRAINER_DUCKDB_PATH)"]
    assert not workspace.duckdb_path.exists()


def test_reading_commands_on_a_database_without_the_results_tables_fail_in_one_line(workspace):
    workspace.query("select 1")  # the database exists (on DuckDB: the file), the results tables do not
    for command in (("runs",), ("metrics",), ("show", "run", "1"), ("export", "--run", "1", "--output", "x.csv")):
        result = workspace.trainer(*command)
        assert result.returncode == 1, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, (command, result.stderr)
        assert "training_runs" in lines[0] and lines[0].endswith(
            "run `python -m trainer init-db` for the results tables and `dbt build` for the dataset views"
        ), (command, lines[0])


def test_train_with_no_examples_exits_1_and_records_the_failed_run(workspace):
    prepared_workspace(workspace, documents=None)  # results and app tables, empty, and the views
    result = workspace.trainer("train", "--quiet")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: training run 1 failed: no training examples")
    runs = workspace.trainer("runs")
    assert "failed" in runs.stdout and "no training examples" in runs.stdout


def test_invalid_options_are_refused_before_any_run(workspace):
    assert workspace.trainer("init-db", "--with-app-tables").returncode == 0
    bad_threshold = workspace.trainer("train", "--confidence-threshold", "1.5")
    assert bad_threshold.returncode == 2 and "--confidence-threshold" in bad_threshold.stderr
    bad_name = workspace.trainer("train", "--model-name", "../escape")
    # A usage error, like every other bad option: refused while the options are parsed.
    assert bad_name.returncode == 2 and "Invalid value for '--model-name': model name '../escape' is invalid" in bad_name.stderr
    bad_target = workspace.trainer("train", "--target", "sqlite")
    assert bad_target.returncode == 2
    assert workspace.query("select count(*) from training.training_runs") == [(0,)]


# -- predict -------------------------------------------------------------------------


def unseen_segments(count: int) -> list[dict]:
    """FUNSD segments from forms the `trained` fixture never saw, with their true labels."""
    data = build_demo_data(read_segments())
    seen = set(demo_subset(TRAINED_DOCUMENTS).documents.column("document_id").to_pylist())
    rows = [
        row for row in data.annotations.to_pylist()
        if row["document_id"] not in seen and row["text"].strip()
    ]
    truth = {segment.doc_id + "-" + str(segment.segment_id): segment.label for segment in read_segments()}
    return [dict(row, true_label=truth[row["annotation_id"]]) for row in rows[:count]]


def write_input(path, rows, columns=("text", "document_id", "page", "x0", "y0", "x1", "y1")):
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([row[name] for name in columns])


def test_predict_labels_unseen_funsd_segments(trained, tmp_path):
    space, _, second = trained
    segments = unseen_segments(300)
    source = tmp_path / "in.csv"
    write_input(source, segments)
    output = tmp_path / "out.csv"
    result = space.trainer("predict", "--model-name", "funsd", "--model-version", "latest",
                           "--input", str(source), "--output", str(output), "--quiet")
    assert result.returncode == 0, result.stderr
    assert "version 2" in result.stdout

    with open(output, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(segments)
    assert list(rows[0]) == ["text", "document_id", "page", "x0", "y0", "x1", "y1", "predicted_label", "confidence"]
    labels = {"question", "answer", "header", "other"}
    correct = 0
    for row, segment in zip(rows, segments):
        assert row["text"] == segment["text"]  # the input passes through byte for byte
        assert row["predicted_label"] in labels
        assert 0.25 <= float(row["confidence"]) <= 1.0  # the top of 4 probabilities
        correct += row["predicted_label"] == segment["true_label"]
    assert correct / len(rows) > 0.55  # far above the 0.44 of always answering "question"


def test_predict_with_version_number_and_only_a_text_column(trained, tmp_path):
    space, first, _ = trained
    source = tmp_path / "in.csv"
    source.write_text('text\nDATE:\n"Line one\nline two, with ""quotes"""\n', encoding="utf-8")
    output = tmp_path / "out.csv"
    result = space.trainer("predict", "--model-name", "funsd", "--model-version", "1",
                           "--input", str(source), "--output", str(output), "--quiet")
    assert result.returncode == 0, result.stderr
    with open(output, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["text"] for row in rows] == ["DATE:", 'Line one\nline two, with "quotes"']


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"label,page\nx,1\n", "line 1: missing required column(s) text"),
        (b"text,page\nok,1\nragged,1,extra\n", "line 3: 3 fields where the header has 2"),
        (b"text\nok\n\xff\xfe\n", "line 3, column 1: not valid UTF-8 (byte 0xff)"),
        (b"text\nnul\x00here\n", "line 2, column 4: NUL byte"),
        (b"text,x0\nok,12\nbad,twelve\n", "line 3, column 2 (x0): 'twelve' is not a number"),
        (b"", "the file is empty (expected a header row)"),
        (b"text,predicted_label\nx,y\n", "line 1: the input already has column(s) predicted_label"),
    ],
)
def test_predict_refuses_bad_input_in_one_line(trained, tmp_path, content, expected):
    space, _, _ = trained
    source = tmp_path / "bad.csv"
    source.write_bytes(content)
    output = tmp_path / "out.csv"
    result = space.trainer("predict", "--model-name", "funsd", "--input", str(source), "--output", str(output))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [f"Error: {source}: {expected}"]
    assert not output.exists()


def test_predict_with_an_unknown_version_or_model(trained, tmp_path):
    space, _, _ = trained
    source = tmp_path / "in.csv"
    source.write_text("text\nDATE:\n", encoding="utf-8")
    output = tmp_path / "out.csv"
    unknown = space.trainer("predict", "--model-name", "funsd", "--model-version", "99",
                            "--input", str(source), "--output", str(output))
    assert unknown.returncode == 1
    assert unknown.stderr.strip() == "Error: model 'funsd' has no version 99 (train one with `python -m trainer train`)"
    nameless = space.trainer("predict", "--model-name", "nobody", "--input", str(source), "--output", str(output))
    assert nameless.returncode == 1
    assert nameless.stderr.strip() == "Error: model 'nobody' has no versions (train one with `python -m trainer train`)"
    not_a_number = space.trainer("predict", "--model-version", "newest", "--input", str(source), "--output", str(output))
    assert not_a_number.returncode == 2 and "--model-version" in not_a_number.stderr
    assert not output.exists()


def test_metrics_prints_what_the_database_holds(trained):
    space, first, _ = trained
    result = space.trainer("metrics", "--run", str(first.run_id))
    assert result.returncode == 0
    stored = dict(space.query(
        "select name, value from training.metrics where run_id = ? and split = 'eval' and label is null", [first.run_id]))
    assert f"accuracy            {stored['accuracy']:.3f}" in result.stdout
    assert f"macro_f1            {stored['macro_f1']:.3f}" in result.stdout
    missing = space.trainer("metrics", "--run", "999")
    assert missing.returncode == 1 and missing.stderr.strip() == "Error: training run 999 does not exist"


# -- printed tables ----------------------------------------------------------------

# Two labels that a 12-character column printed alike ("Prod_quantit"), as a
# receipts data set has them.
LONG_LABELS = {"question": "Prod_quantity_ordered", "answer": "Prod_quantity_shipped"}
LONG_MODEL_NAME = "receipts-line-items-quantities"


def test_train_metrics_runs_and_show_print_long_labels_and_names_in_full(duckdb_workspace):
    space = prepared_workspace(duckdb_workspace, documents=10)
    for label, long in LONG_LABELS.items():
        space.query("update app.annotation_events set label = ? where label = ?", [long, label])
    trained = space.trainer(
        "train", "--model-name", LONG_MODEL_NAME, "--no-embedding", "--no-layout", "--no-neighbours",
        "--no-label-issues", "--stacking-folds", "2", "--quiet",
    )
    assert trained.returncode == 0, trained.stderr
    metrics = space.trainer("metrics", "--run", "1")
    assert metrics.returncode == 0, metrics.stderr
    for printed in (trained.stdout, metrics.stdout):
        for split in ("eval", "train"):
            lines = label_table(printed, split)
            rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
            assert set(LONG_LABELS.values()) <= set(rows)
            assert all(len(figures) == 4 for figures in rows.values())
            assert len({len(line) for line in lines}) == 1  # the columns line up under the header

    runs = space.trainer("runs")
    assert runs.returncode == 0 and LONG_MODEL_NAME in runs.stdout.splitlines()[1].split()

    shown = space.trainer("show", "run", "1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    summary = lines[lines.index(next(line for line in lines if line.startswith("Examples "))) + 2: lines.index("Metrics")]
    assert set(LONG_LABELS.values()) <= {line.split()[1] for line in summary}
    metric_lines = lines[lines.index("Metrics") + 1:]
    assert metric_lines and all(len(line.split()) == 2 for line in metric_lines)  # name and value apart, always
    assert "eval.precision_at_target_precision" in {line.split()[0] for line in metric_lines}


def label_table(printed: str, split: str) -> list[str]:
    """The per-label table of one split (header first) as `train` and `metrics` print it."""
    section = printed.split(f"{split} split\n")[1].split("\n\n")[0].splitlines()
    start = next(i for i, line in enumerate(section) if line.split()[:1] == ["label"])
    return section[start:]
