"""The report as one self-contained HTML page: plain CSS, no script, no request
leaves it (the PNG plots are inlined as data: URIs). Every value that comes from
data (labels, texts, ids, params, errors) is HTML-escaped."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import fields
from datetime import datetime, timezone

from trainer.model.arguments import TrainingArguments
from trainer.report.data import PREDICTIONS_FILE, ReportData
from trainer.report.plots import Plot

HEADLINE = (
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("coverage", "coverage"),
    ("selective_accuracy", "selective accuracy"),
    ("aurc", "AURC"),
)
TEXT_CHARACTERS = 400
NAVIGATION = " ".join(
    f'<a href="#{anchor}">{title}</a>'
    for anchor, title in (
        ("metrics", "Metrics"),
        ("confusion", "Confusion matrix"),
        ("per-label", "Per label"),
        ("risk-coverage", "Risk–coverage"),
        ("distribution", "Labels per split"),
        ("wrong", "Most confidently wrong"),
        ("label-issues", "Label issues"),
    )
)

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:#1f2328;
  font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif}
main{max-width:1180px;margin:0 auto;padding:28px 32px 56px;background:#fff}
h1{font-size:27px;margin:0 0 4px}
h2{font-size:20px;margin:40px 0 10px;padding-bottom:4px;border-bottom:1px solid #d8dee4}
h3{font-size:16px;margin:20px 0 6px}
p{margin:6px 0 10px}
.sub{color:#57606a;margin:0 0 18px}
.status{display:inline-block;font-size:14px;font-weight:600;padding:2px 10px;border-radius:12px;
  vertical-align:middle;background:#dafbe1;color:#116329}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:8px 36px}
table{border-collapse:collapse;font-size:14px;margin:6px 0 12px}
th,td{padding:4px 10px;border-bottom:1px solid #eaeef2;text-align:left;vertical-align:top}
thead th{background:#f6f8fa;border-bottom:1px solid #d0d7de;white-space:nowrap}
.kv th{color:#57606a;font-weight:600;white-space:nowrap;background:none;padding-left:0}
.kv td{overflow-wrap:anywhere}
.args{display:grid;grid-template-columns:repeat(4,1fr);gap:6px 18px;margin:6px 0 10px}
.args div{border-bottom:1px solid #eaeef2;padding:2px 0 4px;min-width:0}
.args b{display:block;color:#57606a;font-size:12px;font-weight:600}
nav{font-size:14px;margin:0 0 8px}
nav a{color:#0969da;text-decoration:none;margin-right:14px}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.mono,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;font-size:13px;
  overflow-wrap:anywhere}
.text{white-space:pre-wrap;overflow-wrap:anywhere;min-width:260px;max-width:460px}
.wide{width:100%}
.note{color:#57606a}
.unavailable{background:#fff8c5;border:1px solid #d4a72c;border-radius:6px;padding:8px 12px}
figure{margin:10px 0 14px}
img{display:block;max-width:100%;height:auto}
details{margin:8px 0}
summary{cursor:pointer;font-weight:600}
footer{margin-top:48px;color:#57606a;font-size:13px}
"""


def e(value: object) -> str:
    """HTML-escape any value, quotes included."""
    return html.escape("" if value is None else str(value), quote=True)


def number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def when(moment: datetime | None) -> str:
    return "" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def render_page(data: ReportData, plots: list[Plot], generator: str) -> str:
    run = data.run
    version = data.model_version
    title = f"Training run {run.run_id}" + (f" · {version.model_name} version {version.version}" if version else "")
    by_name = {plot.name: plot for plot in plots}
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{CSS}</style></head><body><main>",
        _header(data, title),
        _headline(data),
        _section("confusion", "Confusion matrix", by_name.get("confusion_matrix"),
                 "Rows are the accepted labels, columns what the model predicted; each cell gives the number of eval "
                 "examples and its share of the row, and the colour is that share. The diagonal is right."),
        _per_label(data, by_name.get("per_label")),
        _risk_coverage(data, by_name.get("risk_coverage")),
        _distribution(data, by_name.get("label_distribution")),
        _wrong(data),
        _label_issues(data),
        _in_the_field(data),
        f"<footer>Generated {e(when(datetime.now(timezone.utc)))} by {e(generator)} "
        f"(<code>python -m trainer report {run.run_id}</code>) from the run's rows in schema "
        "<code>training</code> and its artifact.</footer>",
        "</main></body></html>",
    ]
    return "\n".join(parts) + "\n"


def _kv(rows: list[tuple[str, str]]) -> str:
    """A two-column table; values are HTML already."""
    body = "".join(f"<tr><th>{e(key)}</th><td>{value}</td></tr>" for key, value in rows)
    return f'<table class="kv">{body}</table>'


def _header(data: ReportData, title: str) -> str:
    run, version = data.run, data.model_version
    duration = ""
    if run.started_at and run.finished_at:
        seconds = (run.finished_at - run.started_at).total_seconds()
        duration = f"{seconds:,.1f} s" if seconds < 120 else f"{seconds / 60:,.1f} min"
    model = e(run.model_name) + (f" version {version.version}" if version else "")
    run_rows = [
        ("run id", f"<b>{run.run_id}</b>"),
        ("model", model),
        ("status", f'<span class="status">{e(run.status)}</span>'),
        ("created", e(when(run.created_at))),
        ("started", e(when(run.started_at))),
        ("finished", e(when(run.finished_at)) + (f" ({e(duration)})" if duration else "")),
        ("encoder", e(data.encoder or "unknown")),
        ("artifact", f'<span class="mono">{e(run.artifact_uri)}</span>'),
    ]
    source = run.params.get("source")
    dataset_rows = [
        ("fingerprint", f'<span class="mono">{e(run.dataset_fingerprint)}</span>'),
        ("examples", f"{_count(run.train_examples)} train / {_count(run.eval_examples)} eval"),
        ("source", e(source) + (f" ({e(run.params.get('snapshot_of'))})" if run.params.get("snapshot_of") else "")),
        ("as of", e(when(run.dataset_as_of)) or "now (when the run read it)"),
        ("snapshot", f'<span class="mono">{e(run.snapshot_uri)}</span>'),
        ("snapshot sha256", f'<span class="mono">{e(run.snapshot_sha256)}</span>'),
        ("database", e(run.params.get("target"))),
    ]
    known = [f.name for f in fields(TrainingArguments)]
    arguments = [(name, _value(run.params[name])) for name in known if name in run.params]
    # What the Dataset table shows already stays out of "other".
    shown = {"library_versions", "source", "target", "snapshot_of", "as_of"}
    other = [
        (name, _value(value))
        for name, value in sorted(run.params.items())
        if name not in known and name not in shown
    ]
    libraries = run.params.get("library_versions") or {}
    library_rows = [(name, e(value)) for name, value in sorted(libraries.items())] if isinstance(libraries, dict) else []
    return (
        f"<header><h1>{e(title)}</h1>"
        f'<p class="sub">What the run trained on and how its model does on the eval split.</p>'
        f"<nav>{NAVIGATION}</nav>"
        f'<div class="grid"><div><h3>Run</h3>{_kv(run_rows)}</div><div><h3>Dataset</h3>{_kv(dataset_rows)}</div></div>'
        f"<h3>Training arguments</h3>{_grid(arguments)}"
        + (f"<details><summary>Other parameters</summary>{_grid(other)}</details>" if other else "")
        + (f"<details><summary>Library versions</summary>{_grid(library_rows)}</details>" if library_rows else "")
        + "</header>"
    )


def _grid(rows: list[tuple[str, str]]) -> str:
    """Name/value pairs in four columns; values are HTML already."""
    return '<div class="args">' + "".join(f"<div><b>{e(key)}</b>{value}</div>" for key, value in rows) + "</div>"


def _value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return f'<span class="mono">{e(text)}</span>'


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _metric_cell(split: str, name: str, value: float | None) -> str:
    attributes = f'data-metric="{e(split)}:{e(name)}" data-value="{e("" if value is None else repr(float(value)))}"'
    return f'<td class="num" {attributes}>{number(value)}</td>'


def _headline(data: ReportData) -> str:
    header = "".join(f'<th class="num">{e(title)}</th>' for _, title in HEADLINE)
    rows = []
    for split in ("eval", "train"):
        overall = data.overall(split)
        if not overall:
            continue
        examples = data.run.eval_examples if split == "eval" else data.run.train_examples
        cells = "".join(_metric_cell(split, name, overall.get(name)) for name, _ in HEADLINE)
        rows.append(f"<tr><th>{split}</th>{cells}<td class=\"num\">{_count(examples)}</td></tr>")
    threshold = data.confidence_threshold
    eval_overall = data.overall("eval")
    target = eval_overall.get("target_precision")
    lines = [
        f"<p>Coverage is the share of examples whose top probability is at least the run's confidence threshold "
        f"(<b>{number(threshold, 2)}</b>); selective accuracy is the accuracy on those. AURC is the area under the "
        "risk–coverage curve (lower is better).</p>"
    ]
    if target is not None:
        reached = eval_overall.get("threshold_at_target_precision")
        if reached is None:
            lines.append(f"<p>Target precision <b>{number(target, 2)}</b>: no confidence threshold reaches it on the "
                         "eval split.</p>")
        else:
            lines.append(
                f"<p>Target precision <b>{number(target, 2)}</b>: the lowest threshold that reaches it is "
                f"<b>{number(reached)}</b>, covering <b>{percent(eval_overall.get('coverage_at_target_precision'))}"
                f"</b> of the eval examples at precision {number(eval_overall.get('precision_at_target_precision'))}"
                ". Train with <code>--confidence-threshold</code> set to it to use it.</p>"
            )
    return (
        '<section id="metrics"><h2>Headline metrics</h2>'
        f'<table><thead><tr><th>split</th>{header}<th class="num">examples</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>{''.join(lines)}</section>"
    )


def _image(plot: Plot) -> str:
    encoded = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{encoded}" width="{plot.width}" height="{plot.height}" '
        f'alt="{e(plot.title)}" data-file="{e(plot.filename)}"></figure>'
    )


def _unavailable(message: str) -> str:
    return f'<p class="unavailable">{message}</p>'


def _section(anchor: str, heading: str, plot: Plot | None, caption: str, extra: str = "") -> str:
    body = _image(plot) if plot is not None else _unavailable("No figures for this plot in the run's metrics.")
    return f'<section id="{anchor}"><h2>{e(heading)}</h2><p>{caption}</p>{body}{extra}</section>'


def _per_label(data: ReportData, plot: Plot | None) -> str:
    per_label = data.per_label("eval")
    train = data.per_label("train")
    rows = "".join(
        f"<tr><td>{e(label)}</td>"
        + "".join(_metric_cell("eval", f"{name}:{label}", figures.get(name)) for name in ("precision", "recall", "f1"))
        + f'<td class="num">{int(figures.get("support") or 0):,}</td>'
        + f'<td class="num">{number(train.get(label, {}).get("f1"))}</td></tr>'
        for label, figures in per_label.items()
    )
    table = (
        '<table><thead><tr><th>label</th><th class="num">precision</th><th class="num">recall</th>'
        '<th class="num">F1</th><th class="num">support</th><th class="num">F1 on train</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )
    return _section(
        "per-label",
        "Per label",
        plot,
        "Precision, recall and F1 of each label on the eval split; support is its number of eval examples. "
        "A label with little support has noisy figures.",
        table,
    )


def _risk_coverage(data: ReportData, plot: Plot | None) -> str:
    if data.predictions is not None:
        caption = (
            f"Left: the eval examples ranked by confidence (top probability), most confident first; the curve is "
            f"the error rate of the most confident share, drawn from every one of the "
            f"{data.predictions.size:,} predictions ({e(PREDICTIONS_FILE)}), with the ten stored points in grey. "
            "The star is the run's confidence threshold, the diamond the lowest threshold reaching the target "
            "precision. Right: for each threshold, the share it covers and how right the covered predictions are."
        )
        extra = ""
    else:
        caption = "The error rate of the most confident share of the eval examples, from the ten stored points."
        extra = _unavailable(f"The fine curve is unavailable for this run: {e(data.predictions_missing)}.")
    return _section("risk-coverage", "Risk–coverage", plot, caption, extra)


def _distribution(data: ReportData, plot: Plot | None) -> str:
    distribution = data.label_distribution()
    if not distribution:
        return ('<section id="distribution"><h2>Label distribution</h2>'
                + _unavailable("This run recorded no dataset summary.") + "</section>")
    splits = [split for split in ("train", "eval") if split in distribution]
    labels = sorted({label for rows in distribution.values() for label in rows})
    header = "".join(f'<th class="num">{e(split)} examples</th><th class="num">{e(split)} documents</th>'
                     for split in splits)
    rows = "".join(
        f"<tr><td>{e(label)}</td>"
        + "".join(
            f'<td class="num">{distribution[split].get(label, (0, 0))[0]:,}</td>'
            f'<td class="num">{distribution[split].get(label, (0, 0))[1]:,}</td>'
            for split in splits
        )
        + "</tr>"
        for label in labels
    )
    table = f"<table><thead><tr><th>label</th>{header}</tr></thead><tbody>{rows}</tbody></table>"
    return _section(
        "distribution",
        "Label distribution",
        plot,
        "Examples per label in each split of the dataset the run trained on (its recorded summary); the split is "
        "by document, so the shares differ a little.",
        table,
    )


def _text(text: str) -> str:
    cut = text if len(text) <= TEXT_CHARACTERS else text[: TEXT_CHARACTERS - 1] + "…"
    return f'<td class="text">{e(cut)}</td>'


def _wrong(data: ReportData) -> str:
    heading = '<section id="wrong"><h2>Most confidently wrong</h2>'
    predictions = data.predictions
    if predictions is None:
        return heading + _unavailable(f"Unavailable for this run: {e(data.predictions_missing)}.") + "</section>"
    shown = predictions.most_confidently_wrong
    which = "All of them" if len(shown) == predictions.wrong else f"The {len(shown)} the model is most sure of"
    intro = (
        f"<p>{predictions.wrong:,} of the {predictions.size:,} eval examples are predicted wrong. {which}, "
        "most confident first: often a wrong accepted label, sometimes a real weakness of the model.</p>"
    )
    if not shown:
        return heading + intro + "</section>"
    rows = "".join(
        f'<tr><td class="num">{rank}</td>{_text(example.text)}<td>{e(example.label)}</td>'
        f"<td>{e(example.predicted_label)}</td><td class=\"num\">{number(example.confidence)}</td>"
        f'<td class="num">{number(example.label_probability)}</td>'
        f'<td class="mono">{e(example.document_id)}<br>page {e(example.page)}</td>'
        f'<td class="mono">{e(example.annotation_id)}</td></tr>'
        for rank, example in enumerate(shown, start=1)
    )
    return (
        heading
        + intro
        + '<table class="wide"><thead><tr><th class="num">#</th><th>text</th><th>accepted label</th>'
        '<th>predicted</th><th class="num">confidence</th><th class="num">P(accepted)</th><th>document</th>'
        f"<th>annotation</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def _label_issues(data: ReportData) -> str:
    heading = '<section id="label-issues"><h2>Label issues: re-check these accepted labels</h2>'
    issues = data.label_issues
    if not issues:
        return heading + (
            "<p>No label issues are recorded for this run: the model did not doubt any accepted label, or the run "
            "was trained before label checks existed.</p></section>"
        )
    intro = (
        f"<p>{data.label_issue_count:,} accepted labels that the model, cross-validated, finds unlikely "
        "(confident learning: it confidently puts the example in another label). "
        + (f"The {len(issues)} most doubtful are listed" if data.label_issue_count > len(issues) else "All are listed")
        + "; the full list is in <code>training.label_issues</code>.</p>"
    )
    if data.issue_texts_missing:
        intro += _unavailable(f"Texts are missing: {e(data.issue_texts_missing)}.")
    rows = []
    for issue in issues:
        page, text = data.issue_texts.get(issue.annotation_id, (None, ""))
        rows.append(
            f'<tr><td class="num">{issue.rank}</td>{_text(text)}<td>{e(issue.label)}</td>'
            f"<td>{e(issue.suggested_label)}</td>"
            f'<td class="num">{number(issue.label_probability)}</td>'
            f'<td class="num">{number(issue.suggested_probability)}</td><td>{e(issue.split)}</td>'
            f'<td class="mono">{e(issue.document_id)}' + (f"<br>page {e(page)}" if page is not None else "") + "</td>"
            f'<td class="mono">{e(issue.annotation_id)}</td></tr>'
        )
    return (
        heading
        + intro
        + '<table class="wide"><thead><tr><th class="num">rank</th><th>text</th><th>accepted label</th>'
        '<th>suggested</th><th class="num">P(accepted)</th><th class="num">P(suggested)</th><th>split</th>'
        f"<th>document</th><th>annotation</th></tr></thead><tbody>{''.join(rows)}</tbody></table></section>"
    )



def _in_the_field(data: ReportData) -> str:
    heading = '<section id="in-the-field"><h2>In the field: how reviewers answered its proposals</h2>'
    version = data.model_version
    if data.in_the_field_missing:
        return heading + _unavailable(f"Unknown: {e(data.in_the_field_missing)}.") + "</section>"
    field = data.in_the_field
    if version is None or field is None:
        actor = f"model:{version.model_name}@{version.version}" if version else "this version"
        return heading + (
            f"<p>The app's event log holds no proposal of <code>{e(actor)}</code> yet. Once "
            "<code>python -m trainer propose</code> has labelled the pending segments and reviewers have answered "
            "them in the app, this section shows, per label, how often they kept the model's label.</p></section>"
        )
    rows = []
    for row in [*field.rows, field.totals]:
        counts = row.counts
        name = e(row.label) if row.label is not None else "<strong>all labels</strong>"
        rows.append(
            f"<tr><td>{name}</td>"
            + "".join(f'<td class="num">{value:,}</td>' for value in
                      (counts.proposals, counts.accepted, counts.corrected, counts.rejected, counts.pending,
                       counts.superseded + counts.deleted))
            + f'<td class="num">{number(row.acceptance_rate)}</td><td class="num">{number(row.eval_precision)}</td></tr>'
        )  # fmt: skip
    return (
        heading
        + f"<p>Proposals of <code>{e(field.actor)}</code> in the app's event log "
        "(<code>datasets.proposal_acceptance</code>, read when this report was written). Acceptance is "
        "accepted / (accepted + corrected + rejected): how often reviewers kept the proposed label. Beside it, the "
        "precision of the same label on the run's eval split (for all labels: accuracy). A large gap means the "
        "segments reviewers see now differ from the eval split.</p>"
        + '<table><thead><tr><th>proposed label</th><th class="num">proposals</th><th class="num">accepted</th>'
        '<th class="num">corrected</th><th class="num">rejected</th><th class="num">pending</th>'
        '<th class="num">superseded or deleted</th><th class="num">acceptance</th>'
        f'<th class="num">eval precision</th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )
