"""`python -m trainer report`: a real small training run on each engine, then its page.

The page must be stored in the run's artifact directory, show the figures the
metric rows hold, carry only valid PNG plots, escape whatever comes from the data
(an example whose text and label are HTML), and refuse runs that have no report.
"""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass
from datetime import timedelta

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import ENGINES, new_workspace, prepared_workspace
from PIL import Image

from trainer.cli.commands import cli
from trainer.core.blob_store import ArtifactStore
from trainer.model.arguments import TrainingArguments
from trainer.report import ReportResult, write_report
from trainer.results.store import ResultsStore
from trainer.runs.training import train

pytestmark = pytest.mark.slow

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HOSTILE_TEXT = '<script>alert("text")</script> & <b>bold</b> \'quoted\''
HOSTILE_LABEL = "<img src=x onerror=alert(1)>"
IMAGE = re.compile(r"<img\b[^>]*>")
PLOTS = ("confusion_matrix", "per_label", "risk_coverage", "label_distribution")


@dataclass
class Reported:
    space: object
    result: object  # the TrainingResult
    hostile_annotation: str
    report: ReportResult
    page: str  # the stored page


@pytest.fixture(scope="module", params=ENGINES)
def reported(request, tmp_path_factory) -> Reported:
    """A succeeded run on the first 10 demo forms, one eval example of which has an
    HTML text and an HTML label that only it has (so the model always gets it wrong),
    and its report listing every wrong eval example."""
    # Both engines' workspaces share one root, so one blob store: the second run finds
    # its texts in the embedding cache the first one filled (seconds saved, same vectors).
    space = new_workspace(tmp_path_factory.getbasetemp() / "report", request.param, request)
    space.root.mkdir(exist_ok=True)
    prepared_workspace(space, documents=10)
    (annotation_id,) = space.query(
        "select annotation_id from datasets.training_examples where split = 'eval' order by annotation_id limit 1"
    )[0]
    next_event, latest = space.query("select max(event_id) + 1, max(occurred_at) from app.annotation_events")[0]
    with space.database().session() as session:
        session.execute("update app.annotations set text = ? where annotation_id = ?", (HOSTILE_TEXT, annotation_id))
        session.execute(
            "insert into app.annotation_events (event_id, annotation_id, event_type, label, actor, occurred_at) "
            "values (?, ?, 'accepted', ?, 'user:test', ?)",
            (next_event, annotation_id, HOSTILE_LABEL, latest + timedelta(minutes=1)),
        )
    # The embedding alone, with its cross-validated label check over two folds: the fastest model there is.
    args = TrainingArguments(
        model_name="report-test",
        char_ngram_features=False,
        layout_features=False,
        neighbour_features=False,
        stacking_folds=2,
    )
    result = train(args, space.settings(), progress=False)
    report = write_report(space.settings(), result.run_id, top=10_000)
    return Reported(space, result, annotation_id, report, stored_page(space, result))


def stored_page(space, result) -> str:
    store = ArtifactStore(str(space.artifacts))
    return store.read_bytes(store.join(result.model_version.artifact_uri, "report/index.html")).decode("utf-8")


def inlined_pngs(page: str) -> list[bytes]:
    images = IMAGE.findall(page)
    pngs = []
    for tag in images:
        match = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', tag)
        assert match, f"an image that is not an inlined PNG: {tag[:120]}"
        pngs.append(base64.b64decode(match.group(1), validate=True))
    return pngs


def check_png(data: bytes) -> tuple[int, int]:
    assert data.startswith(PNG_SIGNATURE)
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decodes every pixel: a truncated file fails here
        assert image.format == "PNG"
        width, height = image.size
    assert width > 0 and height > 0
    return width, height


def test_the_page_is_stored_in_the_runs_artifact_directory_with_its_plots(reported):
    space, result, report, page = reported.space, reported.result, reported.report, reported.page
    store = ArtifactStore(str(space.artifacts))
    artifact = result.model_version.artifact_uri
    assert report.uri == store.join(artifact, "report/index.html")
    assert report.local_path is not None and report.local_path.is_file() and report.output is None
    listed = store.list_files(store.relative_path(artifact) + "/report")
    names = [file.relative_path.rsplit("/", 1)[-1] for file in listed]
    assert sorted(names) == sorted(["index.html", *(f"{plot}.png" for plot in PLOTS)])
    stored = (*(f"{plot}.png" for plot in PLOTS), "index.html")
    assert report.files == tuple(store.join(artifact, f"report/{name}") for name in stored)
    assert page == report.local_path.read_text(encoding="utf-8")
    assert f"Training run {result.run_id}" in page and "report-test version 1" in page
    # Every image is an inlined PNG that decodes, and the same bytes are stored beside the page.
    pngs = inlined_pngs(page)
    assert len(pngs) == len(PLOTS)
    for name, png in zip(PLOTS, pngs):
        check_png(png)
        assert store.read_bytes(store.join(artifact, f"report/{name}.png")) == png
    # Self-contained: nothing is fetched, nothing runs.
    assert not re.search(r"(src|href)=\"(?!data:|#)", page)
    assert "<script" not in page.lower()


def test_headline_and_per_label_figures_are_the_metric_rows(reported):
    space, result, page = reported.space, reported.result, reported.page
    shown = {
        name: (value, text)
        for name, value, text in re.findall(r'data-metric="([^"]+)" data-value="([^"]*)">([^<]*)<', page)
    }
    metrics = ResultsStore(space.database()).run_metrics(result.run_id)
    overall = {(m.split, m.name): m.value for m in metrics if m.label is None}
    for split in ("eval", "train"):
        for name in ("accuracy", "macro_f1", "coverage", "selective_accuracy", "aurc"):
            value, text = shown[f"{split}:{name}"]
            assert float(value) == overall[(split, name)], (split, name)
            assert text == f"{overall[(split, name)]:.3f}"
    per_label = [m for m in metrics if m.split == "eval" and m.name in ("precision", "recall", "f1")]
    assert per_label
    for metric in per_label:
        value, text = shown[html.escape(f"eval:{metric.name}:{metric.label}", quote=True)]
        assert float(value) == metric.value and text == f"{metric.value:.3f}"
    threshold = overall[("eval", "threshold_at_target_precision")]
    if threshold is not None:
        assert f"<b>{threshold:.3f}</b>" in page


def test_text_and_labels_from_the_data_are_escaped(reported):
    page = reported.page
    assert "<script" not in page.lower() and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&quot;text&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt; &#x27;quoted&#x27;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    # The only tags named img are the plots.
    assert all(tag.startswith('<img src="data:image/png;base64,') for tag in IMAGE.findall(page))
    wrong = page[page.index('id="wrong"') : page.index('id="label-issues"')]
    assert reported.hostile_annotation in wrong


def test_the_most_confidently_wrong_are_those_of_the_stored_predictions(reported):
    space, result, page = reported.space, reported.result, reported.page
    store = ArtifactStore(str(space.artifacts))
    predictions = pq.read_table(
        io.BytesIO(store.read_bytes(store.join(result.model_version.artifact_uri, "predictions.parquet")))
    ).to_pylist()
    wrong = sorted(
        (row for row in predictions if row["label"] != row["predicted_label"]),
        key=lambda row: (-row["confidence"], row["annotation_id"]),
    )
    assert wrong
    section = page[page.index('id="wrong"') : page.index('id="label-issues"')]
    listed = re.findall(r'<td class="mono">([^<]+)</td></tr>', section)
    assert listed == [html.escape(row["annotation_id"]) for row in wrong]  # top=10,000: all of them
    assert f"{len(wrong):,} of the {len(predictions):,} eval examples are predicted wrong" in section
    accuracy = next(m.value for m in ResultsStore(space.database()).run_metrics(result.run_id)
                    if (m.split, m.name, m.label) == ("eval", "accuracy", None))
    assert len(wrong) == round(len(predictions) * (1 - accuracy))


def test_label_issues_are_listed_most_doubtful_first(reported):
    space, result, page = reported.space, reported.result, reported.page
    issues = ResultsStore(space.database()).run_label_issues(result.run_id)
    assert issues, "a run with label_issues on records label issues"
    section = page[page.index('id="label-issues"') :]
    listed = re.findall(r'<td class="mono">([^<]+)</td></tr>', section)
    assert listed == [html.escape(issue.annotation_id) for issue in issues[:50]]
    assert f"{len(issues):,} accepted labels" in section


def test_a_run_without_stored_predictions_still_has_a_report(reported):
    space, result = reported.space, reported.result
    store = ArtifactStore(str(space.artifacts))
    uri = store.join(result.model_version.artifact_uri, "predictions.parquet")
    kept = store.read_bytes(uri)
    store.delete(uri)
    try:
        write_report(space.settings(), result.run_id)
        page = stored_page(space, result)
    finally:
        store.write_bytes(store.relative_path(uri), kept)
    wrong = page[page.index('id="wrong"') : page.index('id="label-issues"')]
    assert "Unavailable for this run" in wrong and "predictions.parquet" in wrong
    assert "The fine curve is unavailable for this run" in page
    # The curve falls back to the ten stored points: still four plots.
    for png in inlined_pngs(page):
        check_png(png)
    assert len(inlined_pngs(page)) == len(PLOTS)


def test_runs_without_a_report_are_refused_in_one_line(reported):
    space = reported.space
    store = ResultsStore(space.database())
    queued = store.queue_run("report-test", {})
    failed = store.queue_run("report-test", {})
    store.fail_run(failed, "the eval split is empty:\nraise eval_percent")
    runner = CliRunner()
    for run_id, message in (
        (999_999, "training run 999999 does not exist"),
        (queued, f"training run {queued} has no report: it is queued; only a succeeded run has one"),
        (
            failed,
            f"training run {failed} has no report: it failed (the eval split is empty: raise eval_percent); "
            "only a succeeded run has one",
        ),
    ):
        outcome = runner.invoke(cli, ["report", str(run_id)], env=space.env())
        assert outcome.exit_code == 1, outcome.output
        assert outcome.output.strip().splitlines() == [f"Error: {message}"]
    latest = runner.invoke(cli, ["report", "latest"], env=space.env())  # the failed run, the latest one
    assert latest.exit_code == 1 and latest.output.startswith(f"Error: training run {failed} has no report")
    assert runner.invoke(cli, ["report", "seven"], env=space.env()).exit_code == 2


def test_the_command_prints_where_the_report_is_and_writes_local_copies(reported, tmp_path):
    space, result = reported.space, reported.result
    copy = tmp_path / "copy"
    runner = CliRunner()
    done = runner.invoke(cli, ["report", str(result.run_id), "--output", str(copy), "--top", "3"], env=space.env())
    assert done.exit_code == 0, done.output
    store = ArtifactStore(str(space.artifacts))
    uri = store.join(result.model_version.artifact_uri, "report/index.html")
    assert done.output.splitlines() == [
        f"Report of run {result.run_id}: {uri}",
        f"Open: {store.path_of(uri)}",
        f"Local copy: {copy / 'index.html'}",
    ]
    assert sorted(path.name for path in copy.iterdir()) == sorted(["index.html", *(f"{plot}.png" for plot in PLOTS)])
    assert (copy / "index.html").read_text(encoding="utf-8") == stored_page(space, result)
    for plot in PLOTS:
        check_png((copy / f"{plot}.png").read_bytes())
    section = stored_page(space, result).split('id="wrong"')[1].split('id="label-issues"')[0]
    assert len(re.findall(r"<tr><td class=\"num\">", section)) == 3  # --top 3

    single = tmp_path / "nested" / "run.html"
    single.parent.mkdir()
    outcome = runner.invoke(cli, ["report", str(result.run_id), "--output", str(single)], env=space.env())
    assert outcome.exit_code == 0, outcome.output
    assert f"Local copy: {single}" in outcome.output
    assert sorted(path.name for path in single.parent.iterdir()) == ["run.html"]
    assert single.read_text(encoding="utf-8") == stored_page(space, result)
    # Written again and again: replaced whole each time, no partial file left behind.
    assert not [path for path in space.artifacts.rglob("*") if ".partial-" in path.name]


def test_help_explains_the_command():
    outcome = CliRunner().invoke(cli, ["report", "--help"])
    assert outcome.exit_code == 0
    for words in ("RUN_ID", "--output", "--top", "confusion matrix", "risk-coverage", "report/index.html"):
        assert words in outcome.output
    assert "report" in CliRunner().invoke(cli, ["--help"]).output
