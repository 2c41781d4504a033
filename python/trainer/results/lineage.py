"""Lineage: from a model version (or a run) back to the exact examples.

model version → run → params and library versions → dataset fingerprint →
snapshot → counts per split and label. Everything comes from the results
tables; nothing is recomputed from the live views, which may have moved on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from trainer.core.text_table import table
from trainer.results.store import ModelVersion, ResultsStore, TrainingRun


def run_lineage(store: ResultsStore, run_id: int) -> dict[str, Any]:
    run = store.get_run(run_id)
    return _lineage(store, run, store.get_model_version_by_run(run_id))


def model_lineage(store: ResultsStore, model_name: str, version: int | None) -> dict[str, Any]:
    model_version = store.get_model_version(model_name, version)
    return _lineage(store, store.get_run(model_version.run_id), model_version)


def _lineage(store: ResultsStore, run: TrainingRun, version: ModelVersion | None) -> dict[str, Any]:
    params = dict(run.params)
    library_versions = params.pop("library_versions", None)
    overall = [metric for metric in store.run_metrics(run.run_id) if metric.label is None]
    return {
        "model_version": None
        if version is None
        else {
            "model_version_id": version.model_version_id,
            "model_name": version.model_name,
            "version": version.version,
            "artifact_uri": version.artifact_uri,
            "artifact_sha256": version.artifact_sha256,
            "created_at": _iso(version.created_at),
        },
        "run": {
            "run_id": run.run_id,
            "model_name": run.model_name,
            "status": run.status,
            "created_at": _iso(run.created_at),
            "started_at": _iso(run.started_at),
            "finished_at": _iso(run.finished_at),
            "worker": run.worker,
            "error": run.error,
            "artifact_uri": run.artifact_uri,
        },
        "params": params,
        "library_versions": library_versions,
        "dataset": {
            "fingerprint": run.dataset_fingerprint,
            "as_of": _iso(run.dataset_as_of),
            "train_examples": run.train_examples,
            "eval_examples": run.eval_examples,
            "snapshot": None
            if run.snapshot_uri is None
            else {"uri": run.snapshot_uri, "sha256": run.snapshot_sha256},
            "summary": run.dataset_summary,
        },
        "metrics": {f"{metric.split}.{metric.name}": metric.value for metric in overall},
    }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def render_lineage(lineage: dict[str, Any]) -> str:
    """The chain as indented text, one link per block, for people."""
    lines: list[str] = []
    version, run, dataset = lineage["model_version"], lineage["run"], lineage["dataset"]
    if version is not None:
        lines += [
            f"Model version    {version['model_name']} v{version['version']} (id {version['model_version_id']}, "
            f"created {version['created_at']})",
            f"  artifact       {version['artifact_uri']}",
            f"  sha256         {version['artifact_sha256']}",
        ]
    lines += [
        f"Run              {run['run_id']} {run['status']} (created {run['created_at']}, finished {run['finished_at'] or '-'})",
    ]
    if run["worker"]:
        lines.append(f"  worker         {run['worker']}")
    if run["error"]:
        lines.append(f"  error          {run['error']}")
    lines.append("Params")
    lines += table(sorted(lineage["params"].items()), "<<")
    if lineage["library_versions"]:
        lines.append("Library versions")
        lines += table(sorted(lineage["library_versions"].items()), "<<")
    lines.append(f"Dataset          {dataset['fingerprint'] or '(not read yet)'}")
    if dataset["as_of"]:
        lines.append(f"  as of          {dataset['as_of']} UTC")
    if dataset["snapshot"]:
        lines += [f"Snapshot         {dataset['snapshot']['uri']}", f"  sha256         {dataset['snapshot']['sha256']}"]
    if dataset["summary"]:
        lines.append(f"Examples         {dataset['train_examples']} train / {dataset['eval_examples']} eval")
        summary = [(row["split"], row["label"], row["examples"], row["documents"]) for row in dataset["summary"]]
        lines += table([("split", "label", "examples", "documents"), *summary], "<<>>")
    if lineage["metrics"]:
        lines.append("Metrics")
        metrics = sorted(lineage["metrics"].items())
        lines += table([(key, "n/a" if value is None else f"{value:.4f}") for key, value in metrics], "<<")
    return "\n".join(lines)
