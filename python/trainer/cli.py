"""`python -m trainer`: a thin command line over the library functions.

Each command resolves its settings, calls one library function and prints the
outcome; errors a user can act on become one line on stderr and exit status 1.
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import click

from trainer.errors import TrainerError
from trainer.settings import TARGETS, Settings

ENVIRONMENT_HELP = """
\b
Settings (CONTRACT §6):
  TRAINER_TARGET         duckdb (default) or postgres
  TRAINER_DUCKDB_PATH    DuckDB file (default: warehouse.duckdb at the repo root)
  PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE
                         the PostgreSQL connection (libpq's defaults)
  TRAINER_ARTIFACTS_URL  blob store: a path, file://, memory:// or s3://
                         (default: artifacts/ at the repo root)
  TRAINER_HEARTBEAT_INTERVAL, TRAINER_HEARTBEAT_TIMEOUT
                         seconds (15, 120): how often a running run beats,
                         and when a silent one is reaped as "worker lost"
"""


def user_errors(command):
    """Turn TrainerError into click's one-line error and exit status 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except TrainerError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


def target_option(command):
    return click.option(
        "--target",
        type=click.Choice(TARGETS),
        envvar="TRAINER_TARGET",
        default=None,
        help="Database to use (default: duckdb; env TRAINER_TARGET).",
    )(command)


def model_name_option(command):
    from trainer.arguments import DEFAULT_MODEL_NAME

    return click.option(
        "--model-name",
        default=DEFAULT_MODEL_NAME,
        show_default=True,
        help="Name the model versions are registered under.",
    )(command)


def _progress(quiet: bool) -> bool | None:
    # None lets tqdm decide: bars on a terminal, silence in logs and pipes.
    return False if quiet else None


@click.group(epilog=ENVIRONMENT_HELP)
@click.version_option(package_name="training-db-pipeline")
def cli():
    """Train and measure models from the annotation app's database.

    \b
    The usual sequence on the embedded default:
      python -m trainer init-db
      python -m trainer load-demo          # or point at the app's own tables
      dbt build --profiles-dir profiles    # builds datasets.training_examples
      python -m trainer train
      python -m trainer metrics

    \b
    A queue instead of training in place:
      python -m trainer request            # prints the queued run's id
      python -m trainer worker --until-empty
    """


@cli.command("init-db")
@target_option
@click.option("--app-schema", default=None, help="Schema of the app's tables (default: app; env TRAINER_APP_SCHEMA).")
@click.option(
    "--with-app-tables",
    is_flag=True,
    help="Also create the app's tables when absent (always on DuckDB; on PostgreSQL only for development databases).",
)
@user_errors
def init_db(target, app_schema, with_app_tables):
    """Create the results tables (and, where wanted, the app's tables).

    Creates schema `training` with training_runs, model_versions and metrics
    through numbered migrations (recorded in training.schema_migrations), so
    running it again changes nothing and a newer release only adds what is new.

    On DuckDB (the embedded default) it also creates the file and the app's
    documents, annotations and annotation_events tables when they are absent.
    On PostgreSQL the app owns its tables: they are created only with
    --with-app-tables.
    """
    from trainer.app_tables import create_app_tables, missing_app_tables
    from trainer.db import Database
    from trainer.results_store import ResultsStore

    settings = Settings.from_env(target=target, app_schema=app_schema)
    database = Database(settings)
    with database.session(create=True) as session:
        if settings.target == "duckdb" or with_app_tables:
            created = create_app_tables(session, settings.app_schema)
            missing = []
        else:
            created, missing = [], missing_app_tables(session, settings.app_schema)
        applied = ResultsStore(database).migrate(session)
    click.echo(f"Database: {database.describe()}")
    if created:
        click.echo(f"App tables created: {', '.join(settings.app_schema + '.' + name for name in created)}")
    elif missing:
        click.echo(
            f"App tables missing in schema {settings.app_schema}: {', '.join(missing)} "
            "(the app creates them; --with-app-tables creates empty ones for development)"
        )
    else:
        click.echo(f"App tables: present in schema {settings.app_schema}")
    click.echo(
        f"Results schema: applied migration(s) {', '.join(map(str, applied))}"
        if applied
        else "Results schema: up to date"
    )


@cli.command("load-demo")
@target_option
@click.option("--app-schema", default=None, help="Schema of the app's tables (default: app; env TRAINER_APP_SCHEMA).")
@user_errors
def load_demo_command(target, app_schema):
    """Load the bundled FUNSD forms into the app's tables.

    149 real scanned forms (7,411 segments) become documents, annotations and
    annotation_events with a deterministic review history. Rows already present
    are left alone, so loading twice inserts nothing.
    """
    from trainer.db import Database
    from trainer.demo import load_demo

    settings = Settings.from_env(target=target, app_schema=app_schema)
    database = Database(settings)
    report = load_demo(database, settings.app_schema)
    click.echo(f"Database: {database.describe()}")
    for table, total in (
        ("documents", report.documents),
        ("annotations", report.annotations),
        ("annotation_events", report.annotation_events),
    ):
        click.echo(f"  {settings.app_schema}.{table}: {report.inserted[table]} inserted ({total} in the demo)")


TRAINING_OPTIONS = ("model_name", "confidence_threshold", "seed", "batch_size")


def training_options(command):
    """The options that become a run's TrainingArguments (train and request)."""
    command = click.option(
        "--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Texts per encoder batch."
    )(command)
    command = click.option(
        "--seed", type=int, default=42, show_default=True, help="Seed of every random choice of the run."
    )(command)
    command = click.option(
        "--confidence-threshold",
        type=click.FloatRange(0.0, 1.0),
        default=0.5,
        show_default=True,
        help="A prediction is covered when its top probability is at least this.",
    )(command)
    return model_name_option(command)


def _training_arguments(model_name, confidence_threshold, seed, batch_size):
    from trainer.arguments import TrainingArguments

    return TrainingArguments(
        model_name=model_name,
        confidence_threshold=confidence_threshold,
        seed=seed,
        embedding_batch_size=batch_size,
    )


@cli.command()
@target_option
@training_options
@click.option(
    "--training-run",
    "training_run",
    type=click.IntRange(min=1),
    default=None,
    help="Run this queued run (see `request`) with the options it was queued with.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@user_errors
def train(ctx, target, model_name, confidence_threshold, seed, batch_size, training_run, quiet):
    """Train a model on datasets.training_examples and record the run.

    Reads the accepted examples built by dbt, embeds their texts with
    all-MiniLM-L6-v2, fits a logistic-regression head on the train split,
    evaluates on the eval split, stores the artifact in the blob store and
    writes the run, its metrics and a new model version to the database.
    On failure the run is marked failed with the error and the command exits 1.

    With --training-run ID it runs that queued run instead of a new one.
    """
    from trainer.db import Database
    from trainer.results_store import ResultsStore
    from trainer.training import run_queued
    from trainer.training import train as train_model

    settings = Settings.from_env(target=target)
    with _terminate_as_interrupt():
        if training_run is not None:
            given = [
                "--" + name.replace("_", "-")
                for name in TRAINING_OPTIONS
                if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
            ]
            if given:
                raise click.UsageError(
                    f"--training-run uses the options the run was queued with; drop {', '.join(given)}"
                )
            result = run_queued(training_run, settings, progress=_progress(quiet))
        else:
            args = _training_arguments(model_name, confidence_threshold, seed, batch_size)
            result = train_model(args, settings, progress=_progress(quiet))
    version = result.model_version
    click.echo(
        f"Run {result.run_id} succeeded: {version.model_name} version {version.version} "
        f"({result.train_examples} train / {result.eval_examples} eval examples, "
        f"dataset {result.dataset_fingerprint[:12]})"
    )
    click.echo(f"Artifact: {version.artifact_uri}")
    # Print what the database now holds, not what this process computed.
    _echo_metrics(ResultsStore(Database(settings)).run_metrics(result.run_id))


@cli.command()
@target_option
@training_options
@user_errors
def request(target, model_name, confidence_threshold, seed, batch_size):
    """Queue a training run and print its id; a worker runs it.

    The run is recorded as `queued` with its params; `python -m trainer worker`
    (or `train --training-run ID`) picks it up.
    """
    from trainer.work_queue import request_run

    args = _training_arguments(model_name, confidence_threshold, seed, batch_size)
    click.echo(request_run(args, Settings.from_env(target=target)))


@cli.command()
@target_option
@click.option("--until-empty", is_flag=True, help="Exit when no queued run is left (status 1 if any run failed).")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds between looks at an empty queue.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def worker(target, until_empty, poll_interval, quiet):
    """Run queued training runs one at a time, oldest first.

    Claiming is atomic (FOR UPDATE SKIP LOCKED on PostgreSQL, the file's
    single-writer lock on DuckDB), so any number of workers run every queued
    run exactly once. Before each claim the worker reaps runs whose heartbeat is
    older than TRAINER_HEARTBEAT_TIMEOUT (default 120 s) as failed ("worker lost").
    Stop it with Ctrl-C or SIGTERM: the run in progress is marked failed.
    """
    from trainer.work_queue import work

    with _terminate_as_interrupt():
        report = work(
            Settings.from_env(target=target),
            until_empty=until_empty,
            poll_interval=poll_interval,
            progress=_progress(quiet),
            on_event=click.echo,
        )
    click.echo(f"Queue empty: {len(report.succeeded)} succeeded, {len(report.failed)} failed.")
    if report.failed:
        raise SystemExit(1)


@cli.command()
@target_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds without heartbeat after which a running run is lost (default: TRAINER_HEARTBEAT_TIMEOUT, 120).",
)
@user_errors
def reap(target, timeout):
    """Mark running runs whose worker died as failed ("worker lost")."""
    from trainer.work_queue import reap as reap_runs

    reaped = reap_runs(Settings.from_env(target=target), timeout)
    click.echo(f"Reaped {len(reaped)} run(s){': ' + ', '.join(map(str, reaped)) if reaped else ''}.")


@cli.command()
@target_option
@model_name_option
@click.option(
    "--model-version",
    "model_version",
    default="latest",
    show_default=True,
    help="Version number to use, or 'latest'.",
)
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True, help="CSV with a `text` column.")
@click.option("--output", "output_path", type=click.Path(path_type=Path), required=True, help="CSV to write.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def predict(target, model_name, model_version, input_path, output_path, quiet):
    """Label the segments of a CSV with a trained model version.

    The input needs a `text` column; `document_id, page, x0, y0, x1, y1` may be
    present. The output is the input plus `predicted_label` and `confidence`
    (the top class probability).
    """
    from trainer.predict import predict_csv

    version = _parse_version(model_version)
    report = predict_csv(
        Settings.from_env(target=target), input_path, output_path, model_name, version, progress=_progress(quiet)
    )
    click.echo(
        f"Labelled {report.rows} segment(s) with {report.model_version.model_name} "
        f"version {report.model_version.version} -> {report.output}"
    )


@cli.command()
@target_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs to list.")
@user_errors
def runs(target, limit):
    """List the most recent training runs."""
    from trainer.db import Database
    from trainer.results_store import ResultsStore

    rows = ResultsStore(Database(Settings.from_env(target=target))).list_runs(limit)
    if not rows:
        click.echo("No training runs yet.")
        return
    click.echo(f"{'run':>5}  {'status':<9}  {'model':<20}  {'created (UTC)':<19}  {'train':>6}  {'eval':>6}  error")
    for run in rows:
        click.echo(
            f"{run.run_id:>5}  {run.status:<9}  {run.model_name[:20]:<20}  "
            f"{run.created_at:%Y-%m-%d %H:%M:%S}  {_blank(run.train_examples):>6}  "
            f"{_blank(run.eval_examples):>6}  {run.error or ''}"
        )


@cli.command()
@target_option
@click.option("--run", "run_id", default="latest", show_default=True, help="Run id, or 'latest'.")
@user_errors
def metrics(target, run_id):
    """Print the metrics a run wrote to the database."""
    from trainer.db import Database
    from trainer.results_store import ResultsStore

    store = ResultsStore(Database(Settings.from_env(target=target)))
    chosen = store.latest_run_id() if run_id == "latest" else _parse_run_id(run_id)
    run = store.get_run(chosen)
    click.echo(f"Run {run.run_id} ({run.model_name}): {run.status}")
    if run.error:
        click.echo(f"Error: {run.error}")
    _echo_metrics(store.run_metrics(chosen))


def _echo_metrics(metrics) -> None:
    if not metrics:
        return
    for split in ("eval", "train"):
        rows = [metric for metric in metrics if metric.split == split]
        if not rows:
            continue
        overall = {metric.name: metric.value for metric in rows if metric.label is None}
        click.echo(f"\n{split} split")
        for name in ("accuracy", "macro_f1", "coverage", "selective_accuracy"):
            if name in overall:
                click.echo(f"  {name:<19} {_number(overall[name])}")
        labels = sorted({metric.label for metric in rows if metric.label is not None})
        click.echo(f"  {'label':<12} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>8}")
        for label in labels:
            figures = {metric.name: metric.value for metric in rows if metric.label == label}
            click.echo(
                f"  {label[:12]:<12} {_number(figures.get('precision')):>9} {_number(figures.get('recall')):>7} "
                f"{_number(figures.get('f1')):>6} {int(figures.get('support') or 0):>8}"
            )


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _blank(value) -> str:
    return "" if value is None else str(value)


def _parse_version(value: str) -> int | None:
    if value.strip().lower() == "latest":
        return None
    try:
        number = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a version number or 'latest'", param_hint="--model-version")
    if number < 1:
        raise click.BadParameter("versions start at 1", param_hint="--model-version")
    return number


def _parse_run_id(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a run id or 'latest'", param_hint="--run")


class _terminate_as_interrupt:
    """Let SIGTERM unwind like Ctrl-C, so a stopped run is marked failed."""

    def __enter__(self):
        def handler(signum, frame):
            raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

        self._previous = signal.signal(signal.SIGTERM, handler)

    def __exit__(self, *exc_info):
        signal.signal(signal.SIGTERM, self._previous)
        return False
