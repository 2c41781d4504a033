"""`python -m trainer`: a thin command line over the library functions.

Each command resolves its settings, calls one library function and prints the
outcome; errors a user can act on become one line on stderr and exit status 1.
"""

from __future__ import annotations

import functools
import signal
from pathlib import Path

import click

from trainer.core.errors import TrainerError
from trainer.core.settings import TARGETS, Settings, environment_help

ENVIRONMENT_HELP = environment_help()


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
    from trainer.model.arguments import DEFAULT_MODEL_NAME

    return click.option(
        "--model-name",
        default=DEFAULT_MODEL_NAME,
        show_default=True,
        callback=_checked_model_name,
        help="Name the model versions are registered under (1-100 letters, digits, '.', '_', '-').",
    )(command)


def model_version_option(purpose: str = "to use"):
    """``--model-version N|latest``, parsed (see :func:`_parse_version`) into an int or None."""
    return click.option(
        "--model-version",
        "model_version",
        default="latest",
        show_default=True,
        callback=lambda ctx, param, value: _parse_version(value),
        help=f"Version number {purpose}, or 'latest'.",
    )


def _checked_model_name(ctx, param, value):
    from trainer.core.errors import ConfigurationError
    from trainer.model.arguments import check_model_name

    try:
        return check_model_name(value)
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc)) from None


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
    from trainer.core.db import Database
    from trainer.data.app_tables import create_app_tables, missing_app_tables
    from trainer.results.store import ResultsStore

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
    from trainer.core.db import Database
    from trainer.data.demo import load_demo

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


@cli.command("demo-reviews")
@target_option
@model_name_option
@model_version_option()
@user_errors
def demo_reviews(target, model_name, model_version):
    """Play the app's reviewers on the demo forms (after `propose`).

    For the demo only: each pending segment the version proposed a label for gets
    a `proposed` event with the model's actor, then a reviewer's decision taken
    from the form's true label (accepted when the proposal is right; otherwise the
    true label is accepted, or one in four is rejected). datasets.proposal_acceptance
    then shows how the version fared. Never run it on a real app's database.
    """
    from trainer.runs.propose import play_demo_reviews

    version, report = play_demo_reviews(Settings.from_env(target=target), model_name, model_version)
    click.echo(
        f"Reviewed {report.proposals} proposal(s) of {version.model_name} version {version.version}: "
        f"{report.accepted} accepted, {report.corrected} corrected, {report.rejected} rejected."
    )


def training_options(command):
    """The options that become a run's TrainingArguments (train, train-st and request):
    one per field, ``--<field-name>`` (switches ``--<name>/--no-<name>``), with the
    field's default, range and help (trainer.model.arguments), and the spellings of
    earlier releases as aliases."""
    from trainer.model.arguments import argument_specs

    for name, (default, kind, spec) in reversed(list(argument_specs().items())):
        command = click.option(*_option_names(name, kind, spec), **_option_settings(name, default, kind, spec))(command)
    return command


def _option_names(name: str, kind: type, spec) -> list[str]:
    flag = "--" + name.replace("_", "-")
    if kind is bool:
        flag = f"{flag}/--no-{name.replace('_', '-')}"
    return [flag, *spec.aliases, name]


def _option_settings(name: str, default, kind: type, spec) -> dict:
    settings: dict = {"default": default, "show_default": True, "help": spec.help}
    if spec.choices is not None:
        settings["type"] = click.Choice(list(spec.choices))
    elif kind is int:
        settings["type"] = click.IntRange(spec.minimum, spec.maximum, min_open=spec.exclusive_minimum)
    elif kind is float:
        settings["type"] = click.FloatRange(spec.minimum, spec.maximum, min_open=spec.exclusive_minimum)
    if name == "model_name":
        settings["callback"] = _checked_model_name
    return settings


def source_options(command):
    """Where a run's examples come from (train and request); at most one."""
    command = click.option(
        "--from-csv",
        "from_csv",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Legacy flow: train on an old CSV export (annotation_id, document_id, page, text, label, status).",
    )(command)
    command = click.option(
        "--from-snapshot",
        "from_snapshot",
        metavar="RUN_ID|FINGERPRINT",
        default=None,
        help="Train on the snapshot an earlier run stored (run id, or 8+ hex digits of a fingerprint); "
        "the views are not read.",
    )(command)
    return click.option(
        "--as-of",
        "as_of",
        metavar="TIMESTAMP",
        default=None,
        help="Build the examples as they were at this UTC time (ISO 8601, e.g. 2026-11-23T18:00:00Z): "
        "later events are ignored.",
    )(command)


def _example_source(as_of, from_snapshot, from_csv):
    from trainer.data.point_in_time import parse_as_of
    from trainer.runs.sources import CsvSource, DatabaseSource, SnapshotSource

    given = [name for name, value in (("--as-of", as_of), ("--from-snapshot", from_snapshot), ("--from-csv", from_csv)) if value]
    if len(given) > 1:
        raise click.UsageError(f"{' and '.join(given)} cannot be combined: choose one source of examples")
    if from_snapshot:
        return SnapshotSource(from_snapshot)
    if from_csv:
        return CsvSource(from_csv)
    return DatabaseSource(parse_as_of(as_of) if as_of else None)


SOURCE_OPTIONS = ("as_of", "from_snapshot", "from_csv")


def run_options(command):
    """The options that say what a run trains and on which examples (train and
    request): the command gets them as one dict, ``run_options``, which
    :func:`_run_spec` turns into the run's arguments and source."""

    from trainer.model.arguments import argument_specs

    names = (*argument_specs(), *SOURCE_OPTIONS)

    @functools.wraps(command)
    def collected(*args, **kwargs):
        options = {name: kwargs.pop(name) for name in names}
        return command(*args, run_options=options, **kwargs)

    return training_options(source_options(collected))


def _run_spec(options: dict):
    """(TrainingArguments, ExampleSource) of the ``run_options`` a command got."""
    from trainer.model.arguments import TrainingArguments, argument_specs

    args = TrainingArguments(**{name: options[name] for name in argument_specs()})
    return args, _example_source(*(options[name] for name in SOURCE_OPTIONS))


@cli.command()
@target_option
@run_options
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
def train(ctx, target, run_options, training_run, quiet):
    """Train a model and record the run, its snapshot, metrics and model version.

    Reads the accepted examples built by dbt (datasets.training_examples),
    stores them as a Parquet snapshot in the blob store (one file per distinct
    dataset, shared by runs), embeds their texts with all-MiniLM-L6-v2, fits
    text models (embedding, character n-grams) and a second stage over layout
    and neighbours on the train split (--no-layout etc. switch families off;
    docs/MODELS.md), evaluates on the eval split, looks for label issues,
    stores the model artifact and writes the run, its metrics and a new model
    version to the database. On failure the run is marked failed with the
    error and the command exits 1.

    \b
    Other sources of examples (one at most):
      --as-of T            the datasets as they were at UTC time T
      --from-snapshot REF  an earlier run's snapshot (run id or fingerprint)
      --from-csv PATH      the legacy CSV export

    With --training-run ID it runs that queued run instead of a new one.
    """
    _train(ctx, target, run_options, training_run, quiet)


@cli.command("train-st")
@target_option
@run_options
@click.option(
    "--training-run",
    "training_run",
    type=click.IntRange(min=1),
    default=None,
    help="Run this queued run (see `request --fine-tune`) with the options it was queued with.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
@user_errors
def train_st(ctx, target, run_options, training_run, quiet):
    """Train like `train`, with the sentence encoder fine-tuned on the examples first.

    SetFit-style: pairs of train-split texts with the same label (positives)
    and with different labels (negatives), balanced and drawn with --seed, at
    most --fine-tune-max-pairs of them, train all-MiniLM-L6-v2 with
    sentence-transformers' own trainer for one epoch, stopping after the step
    that crosses --fine-tune-max-seconds. Then the texts are embedded with the
    fine-tuned encoder and the model is fitted as `train` does (every feature
    option applies). The encoder is saved with the model as safetensors, and
    `predict` uses it. The run and model version are recorded like any other;
    params.fine_tuning has the pairs, steps and seconds. docs/MODELS.md has
    what it gains on the demo forms, and what it costs.
    """
    run_options["fine_tune"] = True
    _train(ctx, target, run_options, training_run, quiet)


def _train(ctx, target, run_options, training_run, quiet):
    from trainer.core.db import Database
    from trainer.results.store import ResultsStore
    from trainer.runs.training import run_queued
    from trainer.runs.training import train as train_model

    settings = Settings.from_env(target=target)
    with _terminate_as_interrupt():
        if training_run is not None:
            given = [
                "--" + name.replace("_", "-")
                for name in run_options
                if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
            ]  # train-st's own fine_tune is not given on the command line
            if given:
                raise click.UsageError(
                    f"--training-run uses the options the run was queued with; drop {', '.join(given)}"
                )
            result = run_queued(training_run, settings, progress=_progress(quiet))
        else:
            args, source = _run_spec(run_options)
            result = train_model(args, settings, progress=_progress(quiet), source=source)
    version = result.model_version
    click.echo(
        f"Run {result.run_id} succeeded: {version.model_name} version {version.version} "
        f"({result.train_examples} train / {result.eval_examples} eval examples, "
        f"dataset {result.dataset_fingerprint[:12]})"
    )
    click.echo(f"Snapshot: {result.snapshot_uri}")
    click.echo(f"Artifact: {version.artifact_uri}")
    # Print what the database now holds, not what this process computed.
    _echo_metrics(ResultsStore(Database(settings)).run_metrics(result.run_id))


@cli.command()
@target_option
@run_options
@user_errors
def request(target, run_options):
    """Queue a training run and print its id; a worker runs it.

    The run is recorded as `queued` with its params (including where its
    examples come from); `python -m trainer worker` (or `train --training-run
    ID`) picks it up. A --from-csv path must be readable by the worker.
    """
    from trainer.runs.work_queue import request_run

    args, source = _run_spec(run_options)
    click.echo(request_run(args, Settings.from_env(target=target), source))


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
    """Run queued training runs one at a time, oldest first, and, when no run is
    queued, the propose jobs queued through the API (POST /model-versions/{id}/propose).

    Claiming is atomic (FOR UPDATE SKIP LOCKED on PostgreSQL, the file's
    single-writer lock on DuckDB), so any number of workers run every queued
    run exactly once. Before each claim the worker reaps runs and propose jobs
    whose heartbeat is older than TRAINER_HEARTBEAT_TIMEOUT (default 120 s) as
    failed ("worker lost"). Stop it with Ctrl-C or SIGTERM: the run or job in
    progress is marked failed. Exits 1 if any of its runs or jobs failed.
    """
    from trainer.runs.work_queue import work

    with _terminate_as_interrupt():
        report = work(
            Settings.from_env(target=target),
            until_empty=until_empty,
            poll_interval=poll_interval,
            progress=_progress(quiet),
            on_event=click.echo,
        )
    summary = f"Queue empty: {len(report.succeeded)} succeeded, {len(report.failed)} failed"
    if report.proposed or report.propose_failed:
        summary += f"; propose jobs: {len(report.proposed)} succeeded, {len(report.propose_failed)} failed"
    click.echo(summary + ".")
    if report.failed or report.propose_failed:
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
    from trainer.runs.work_queue import reap as reap_runs

    reaped = reap_runs(Settings.from_env(target=target), timeout)
    click.echo(f"Reaped {len(reaped)} run(s){': ' + ', '.join(map(str, reaped)) if reaped else ''}.")


@cli.command()
@target_option
@model_name_option
@model_version_option()
@click.option("--input", "input_path", type=click.Path(path_type=Path), required=True, help="CSV with a `text` column.")
@click.option("--output", "output_path", type=click.Path(path_type=Path), required=True, help="CSV to write.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def predict(target, model_name, model_version, input_path, output_path, quiet):
    """Label the segments of a CSV with a trained model version.

    The input needs a `text` column; `document_id, page, x0, y0, x1, y1` may be
    present, and a model with layout or neighbour features uses them: the rows
    of one document_id and page are one page, whose segments are each other's
    neighbours (give whole pages). The output is the input plus `predicted_label` and `confidence`
    (the top class probability).
    """
    from trainer.runs.predict import predict_csv

    report = predict_csv(
        Settings.from_env(target=target), input_path, output_path, model_name, model_version, progress=_progress(quiet)
    )
    click.echo(
        f"Labelled {report.rows} segment(s) with {report.model_version.model_name} "
        f"version {report.model_version.version} -> {report.output}"
    )


@cli.command()
@target_option
@model_name_option
@model_version_option("to propose with")
@click.option(
    "--all",
    "all_segments",
    is_flag=True,
    help="Propose for every live segment, not only the pending ones (e.g. to compare versions on decided ones).",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def propose(target, model_name, model_version, all_segments, quiet):
    """Label the app's pending segments with a model version, for reviewers.

    Reads the pending live segments from datasets.live_segments (run `dbt build`
    first), predicts each with its page as the app has it (every live segment of
    the page, decided or not), and writes one proposal per segment to
    training.proposals: the label, its probability (confidence) and its lead over
    the runner-up (margin). The app reads them least certain first from
    datasets.review_queue. Running it again rewrites only the proposals whose label
    or scores changed. See docs/USER_GUIDE.md, "The review loop".
    """
    from trainer.runs.propose import propose as propose_labels

    report = propose_labels(
        Settings.from_env(target=target), model_name, model_version, all_segments, _progress(quiet)
    )
    version = report.model_version
    click.echo(
        f"Proposed {report.proposed} label(s) with {version.model_name} version {version.version} "
        f"({report.actor}): {report.new} new, {report.changed} changed, "
        f"{report.proposed - report.new - report.changed} unchanged, in {report.seconds:.1f} s."
    )


@cli.command()
@target_option
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="How many runs to list.")
@user_errors
def runs(target, limit):
    """List the most recent training runs."""
    from trainer.core.db import Database
    from trainer.core.text_table import table
    from trainer.results.store import ResultsStore

    rows = ResultsStore(Database(Settings.from_env(target=target))).list_runs(limit)
    if not rows:
        click.echo("No training runs yet.")
        return
    header = ("run", "status", "model", "created (UTC)", "train", "eval", "error")
    cells = [
        (run.run_id, run.status, run.model_name, f"{run.created_at:%Y-%m-%d %H:%M:%S}",
         _blank(run.train_examples), _blank(run.eval_examples), run.error or "")
        for run in rows
    ]  # fmt: skip
    for line in table([header, *cells], "><<<>><", indent=""):
        click.echo(line)


@cli.command()
@target_option
@model_name_option
@model_version_option()
@user_errors
def acceptance(target, model_name, model_version):
    """How reviewers answered a model version's proposals, beside its eval precision.

    Reads datasets.proposal_acceptance (CONTRACT §7.2) for the version's actor
    `model:<name>@<version>`: per proposed label, the proposals reviewers accepted
    as they were, corrected (accepted with another label) or rejected, and the
    acceptance rate accepted / (accepted + corrected + rejected); beside it, the
    precision of that label on the run's eval split (for all labels: accuracy).
    """
    from trainer.core.text_table import table
    from trainer.results.acceptance import field_acceptance

    version, field = field_acceptance(Settings.from_env(target=target), model_name, model_version)
    name = f"{version.model_name} version {version.version}"
    if field is None:
        click.echo(f"No proposals of {name} in the app's event log yet (model:{version.model_name}@{version.version}).")
        return
    header = ("proposed label", "proposals", "accepted", "corrected", "rejected", "pending", "acceptance", "eval precision")
    lines = [header]
    for row in [*field.rows, field.totals]:
        counts = row.counts
        lines.append(
            (row.label if row.label is not None else "all labels", counts.proposals, counts.accepted, counts.corrected,
             counts.rejected, counts.pending, _rate(row.acceptance_rate),
             _rate(row.eval_precision))
        )  # fmt: skip
    click.echo(f"{name} in the field ({field.actor}):")
    for line in table(lines, "<>>>>>>>"):
        click.echo(line)


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


@cli.command()
@target_option
@click.option("--run", "run_id", default="latest", show_default=True, help="Run id, or 'latest'.")
@user_errors
def metrics(target, run_id):
    """Print the metrics a run wrote to the database."""
    from trainer.core.db import Database
    from trainer.results.store import ResultsStore

    store = ResultsStore(Database(Settings.from_env(target=target)))
    chosen = store.latest_run_id() if run_id == "latest" else _parse_run_id(run_id)
    run = store.get_run(chosen)
    click.echo(f"Run {run.run_id} ({run.model_name}): {run.status}")
    if run.error:
        click.echo(f"Error: {run.error}")
    _echo_metrics(store.run_metrics(chosen))


@cli.command()
@target_option
@click.argument("run_id", metavar="RUN_ID")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write a local copy: to this file if it ends in .html, else into this directory "
    "(index.html and the PNGs; created when missing).",
)
@click.option(
    "--top",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="How many of the eval examples the model gets most confidently wrong to list.",
)
@user_errors
def report(target, run_id, output, top):
    """Write the HTML report of training run RUN_ID (a run id, or latest).

    \b
    One page with PNG plots, for people to look at:
      - the run: model and version, dates, dataset fingerprint and snapshot,
        training arguments;
      - headline metrics of eval and train (accuracy, macro-F1, coverage and
        selective accuracy at the confidence threshold, AURC);
      - the eval confusion matrix, precision/recall/F1 per label with support,
        the risk-coverage curve with the confidence threshold and the
        target-precision threshold marked, the labels per split;
      - the eval examples the model gets most confidently wrong, and the label
        issues (accepted labels worth a second look).

    It is stored with the run's model in the blob store, as
    <artifact>/report/index.html (self-contained: the PNGs are inlined, and also
    stored beside it). Only a succeeded run has a report. The command prints
    where the page is.
    """
    from trainer.core.db import Database
    from trainer.report import write_report
    from trainer.results.store import ResultsStore

    settings = Settings.from_env(target=target)
    if run_id.strip().lower() == "latest":
        chosen = ResultsStore(Database(settings)).latest_run_id()
    elif run_id.strip().isdigit():
        chosen = int(run_id)
    else:
        raise click.BadParameter(f"{run_id!r} is not a run id or 'latest'", param_hint="RUN_ID")
    result = write_report(settings, chosen, output=output, top=top)
    click.echo(f"Report of run {result.run_id}: {result.uri}")
    if result.local_path is not None:
        click.echo(f"Open: {result.local_path}")
    if result.output is not None:
        click.echo(f"Local copy: {result.output}")


@cli.group()
def show():
    """Print the lineage of a run or a model version.

    \b
    The chain, from the model back to the exact examples:
      model version -> run -> params and library versions
      -> dataset fingerprint -> snapshot -> counts per split and label
    """


@show.command("run")
@target_option
@click.argument("run_id", type=click.IntRange(min=1))
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
@user_errors
def show_run(target, run_id, as_json):
    """The lineage of training run RUN_ID."""
    from trainer.core.db import Database
    from trainer.results.lineage import run_lineage
    from trainer.results.store import ResultsStore

    _echo_lineage(run_lineage(ResultsStore(Database(Settings.from_env(target=target))), run_id), as_json)


@show.command("model")
@target_option
@click.argument("model_name")
@click.argument("version", default="latest")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
@user_errors
def show_model(target, model_name, version, as_json):
    """The lineage of MODEL_NAME's VERSION (a number, or latest)."""
    from trainer.core.db import Database
    from trainer.results.lineage import model_lineage
    from trainer.results.store import ResultsStore

    store = ResultsStore(Database(Settings.from_env(target=target)))
    _echo_lineage(model_lineage(store, model_name, _parse_version(version, "VERSION")), as_json)


def _echo_lineage(lineage, as_json: bool) -> None:
    import json

    from trainer.results.lineage import render_lineage

    click.echo(json.dumps(lineage, indent=2, sort_keys=True, ensure_ascii=False) if as_json else render_lineage(lineage))


@cli.command()
@target_option
@click.option("--run", "run_id", required=True, help="Run id, or 'latest'.")
@click.option(
    "--format", "fmt", type=click.Choice(["parquet", "jsonl", "csv"]), default="parquet", show_default=True
)
@click.option("--split", type=click.Choice(["all", "train", "eval"]), default="all", show_default=True)
@click.option("--output", type=click.Path(path_type=Path, dir_okay=False), required=True, help="File to write.")
@user_errors
def export(target, run_id, fmt, split, output):
    """Write the exact examples a run trained and evaluated on.

    Reads the run's snapshot from the blob store (checking its sha256 and
    fingerprint), not the live views. Parquet of all splits is the stored file
    byte for byte; CSV (RFC 4180) and JSONL keep every text byte-exact. The
    output appears only when complete.
    """
    from trainer.core.db import Database
    from trainer.results.export import export_run
    from trainer.results.store import ResultsStore

    settings = Settings.from_env(target=target)
    chosen = ResultsStore(Database(settings)).latest_run_id() if run_id == "latest" else _parse_run_id(run_id)
    report = export_run(settings, chosen, fmt, output, split)
    click.echo(
        f"Exported {report.rows} example(s) of run {report.run_id} (dataset {report.fingerprint[:12]}) "
        f"-> {report.output} (sha256 {report.sha256})"
    )


@cli.command()
@target_option
@click.option("--delete", is_flag=True, help="Remove the files listed (default: only list them).")
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    default=3600.0,
    show_default=True,
    help="Seconds: younger files are kept (a trainer may be about to record them).",
)
@user_errors
def gc(target, delete, older_than):
    """List, and with --delete remove, blob-store files no row refers to.

    Looks under models/ and snapshots/ of TRAINER_ARTIFACTS_URL. Kept: what a
    model version or run points at, the files of queued and running runs, and
    anything younger than --older-than. Garbage: partial writes of killed
    trainers, artifacts of failed runs, unreferenced snapshots.
    """
    from trainer.results.gc import collect_garbage

    report = collect_garbage(Settings.from_env(target=target), delete=delete, older_than=older_than)
    for item in report.garbage:
        click.echo(f"{'deleted' if delete else 'garbage'}  {item.file.uri}  ({item.file.size or 0} bytes; {item.reason})")
    verb = "Deleted" if delete else "Found"
    click.echo(
        f"{verb} {len(report.garbage)} unreferenced file(s), {report.garbage_bytes} bytes; kept {report.kept}."
        + ("" if delete or not report.garbage else " Run with --delete to remove them.")
    )


@cli.command()
@target_option
@click.option("--host", envvar="TRAINER_API_HOST", default="127.0.0.1", show_default=True, help="Address to listen on (env TRAINER_API_HOST).")
@click.option(
    "--port", envvar="TRAINER_API_PORT", type=click.IntRange(0, 65535), default=8000, show_default=True,
    help="Port to listen on (env TRAINER_API_PORT; 0 picks a free one).",
)
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="info", show_default=True)
@user_errors
def serve(target, host, port, log_level):
    """Serve the audit API (FastAPI under uvicorn).

    \b
    Runs, metrics, the exact datasets and models of any run, the live dataset,
    and POST /training-runs to queue a run (a `worker` trains it). Every route
    but /health needs a bearer token; the server refuses to start without one:
      TRAINER_API_TOKENS="auditor:reader:<secret>,spa:trainer:<secret>"
    (or TRAINER_API_TOKENS_FILE, one entry per line; `new-token` makes one).
    Every export and download is recorded in training.audit_log.
    OpenAPI: /openapi.json and /docs (with a token), or `python -m trainer openapi`.
    """
    from trainer.api import create_app
    from trainer.api.server import run_server
    from trainer.api.tokens import TokenRegistry

    tokens = TokenRegistry.from_env()
    app = create_app(Settings.from_env(target=target), tokens)
    click.echo(f"Serving the audit API on http://{host}:{port} ({len(tokens.tokens)} token(s) configured)", err=True)
    # uvicorn's limits and timeouts are set explicitly there (and documented in docs/API.md).
    run_server(app, host, port, log_level)


@cli.command("new-token")
@click.argument("name")
@click.option("--role", type=click.Choice(["reader", "trainer"]), default="reader", show_default=True)
@user_errors
def new_token(name, role):
    """Print a new API token entry NAME:ROLE:SECRET for TRAINER_API_TOKENS.

    The secret is 256 random bits; keep the line in your secret store and give
    the part after the second colon to the client.
    """
    from trainer.api.tokens import new_token_entry

    click.echo(new_token_entry(name, role))


@cli.command()
@user_errors
def openapi():
    """Print the audit API's OpenAPI document (JSON), without starting a server."""
    import json

    from trainer.api import create_app
    from trainer.api.tokens import ApiToken, TokenRegistry

    app = create_app(Settings.from_env(), TokenRegistry([ApiToken("offline", "reader", b"")]))
    click.echo(json.dumps(app.openapi(), indent=2, sort_keys=True))


def _echo_metrics(metrics) -> None:
    from trainer.core.text_table import table

    if not metrics:
        return
    for split in ("eval", "train"):
        rows = [metric for metric in metrics if metric.split == split]
        if not rows:
            continue
        overall = {metric.name: metric.value for metric in rows if metric.label is None}
        click.echo(f"\n{split} split")
        for name in ("accuracy", "macro_f1", "coverage", "selective_accuracy", "aurc"):
            if name in overall:
                click.echo(f"  {name:<19} {_number(overall[name])}")
        if "target_precision" in overall:
            threshold = overall.get("threshold_at_target_precision")
            reached = (
                f"threshold {_number(threshold)} covers {_number(overall.get('coverage_at_target_precision'))} "
                f"at precision {_number(overall.get('precision_at_target_precision'))}"
                if threshold is not None
                else "no threshold reaches it"
            )
            click.echo(f"  precision {_number(overall['target_precision'])}: {reached}")
        labels = sorted({metric.label for metric in rows if metric.name == "support"})
        cells = [("label", "precision", "recall", "f1", "support")]
        for label in labels:
            figures = {metric.name: metric.value for metric in rows if metric.label == label}
            cells.append(
                (label, _number(figures.get("precision")), _number(figures.get("recall")),
                 _number(figures.get("f1")), int(figures.get("support") or 0))
            )  # fmt: skip
        for line in table(cells, "<>>>>"):
            click.echo(line)


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _blank(value) -> str:
    return "" if value is None else str(value)


def _parse_version(value: str, hint: str = "--model-version") -> int | None:
    if value.strip().lower() == "latest":
        return None
    try:
        number = int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a version number or 'latest'", param_hint=hint)
    if number < 1:
        raise click.BadParameter("versions start at 1", param_hint=hint)
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
