"""What a run's report shows, read from the results tables and the run's artifact.

Everything comes from what the run stored: its row in ``training.training_runs``,
its metric rows, its label issues, and in the model's artifact directory the
eval predictions (``predictions.parquet``, absent in runs made before it existed).
Nothing is recomputed from the live views, with one exception: the section "in
the field" reads how the app's reviewers answered the model version's proposals
(``datasets.proposal_acceptance``) as of the moment the report is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from trainer.core.blob_store import ArtifactStore
from trainer.core.db import Database
from trainer.core.errors import ArtifactError, DatasetError
from trainer.core.settings import Settings
from trainer.model.evaluation import CONFUSION_PREFIX, RISK_AT_COVERAGE_PREFIX
from trainer.results.acceptance import InTheField, in_the_field
from trainer.results.run_outputs import PREDICTIONS_FILE, read_predictions
from trainer.results.store import LabelIssue, Metric, ModelVersion, ResultsStore, RunStateError, TrainingRun

PREDICTION_COLUMNS = (
    "annotation_id",
    "document_id",
    "page",
    "text",
    "label",
    "predicted_label",
    "confidence",
    "label_probability",
)
LABEL_ISSUES_SHOWN = 50


@dataclass(frozen=True)
class Example:
    """One eval example as the model saw it (a row of predictions.parquet)."""

    annotation_id: str
    document_id: str | None
    page: int | None
    text: str
    label: str
    predicted_label: str
    confidence: float
    label_probability: float


@dataclass
class Predictions:
    """The eval predictions of a run: confidence and rightness of every example."""

    confidence: np.ndarray
    correct: np.ndarray
    most_confidently_wrong: list[Example]
    wrong: int

    @property
    def size(self) -> int:
        return len(self.confidence)


@dataclass
class ReportData:
    run: TrainingRun
    model_version: ModelVersion | None
    metrics: list[Metric]
    predictions: Predictions | None
    # Why there are no predictions (when there are none), for the page to say.
    predictions_missing: str | None
    label_issues: list[LabelIssue]
    label_issue_count: int
    # annotation id -> (page, text) of the label issues shown, from the run's snapshot.
    issue_texts: dict[str, tuple[int | None, str]] = field(default_factory=dict)
    issue_texts_missing: str | None = None
    encoder: str | None = None
    # How reviewers answered the version's proposals (None: no proposal yet), or why unknown.
    in_the_field: InTheField | None = None
    in_the_field_missing: str | None = None

    # -- metric rows ----------------------------------------------------------

    def overall(self, split: str) -> dict[str, float | None]:
        """The figures over all labels of one split, by name."""
        return {m.name: m.value for m in self.metrics if m.split == split and m.label is None}

    def per_label(self, split: str) -> dict[str, dict[str, float | None]]:
        """precision, recall, f1 and support per label (labels sorted)."""
        rows: dict[str, dict[str, float | None]] = {}
        for metric in self.metrics:
            if metric.split == split and metric.label is not None and not metric.name.startswith(CONFUSION_PREFIX):
                rows.setdefault(metric.label, {})[metric.name] = metric.value
        return dict(sorted(rows.items()))

    def confusion(self, split: str) -> tuple[list[str], np.ndarray]:
        """(labels, counts): counts[i, j] examples of true label i predicted as j."""
        cells = {
            (m.label, m.name[len(CONFUSION_PREFIX) :]): m.value or 0.0
            for m in self.metrics
            if m.split == split and m.label is not None and m.name.startswith(CONFUSION_PREFIX)
        }
        labels = sorted({true for true, _ in cells} | {pred for _, pred in cells} | set(self.per_label(split)))
        index = {label: i for i, label in enumerate(labels)}
        counts = np.zeros((len(labels), len(labels)))
        for (true, predicted), value in cells.items():
            counts[index[true], index[predicted]] = value
        return labels, counts

    def risk_points(self, split: str) -> list[tuple[float, float]]:
        """The stored risk–coverage points (coverage, risk), by coverage."""
        points = []
        for name, value in self.overall(split).items():
            if name.startswith(RISK_AT_COVERAGE_PREFIX) and value is not None:
                points.append((float(name[len(RISK_AT_COVERAGE_PREFIX) :]), value))
        return sorted(points)

    @property
    def confidence_threshold(self) -> float | None:
        value = self.run.params.get("confidence_threshold")
        return float(value) if isinstance(value, (int, float)) else None

    def label_distribution(self) -> dict[str, dict[str, tuple[int, int]]]:
        """split -> label -> (examples, documents), from the run's dataset summary."""
        distribution: dict[str, dict[str, tuple[int, int]]] = {}
        for row in self.run.dataset_summary or []:
            distribution.setdefault(str(row.get("split")), {})[str(row.get("label"))] = (
                int(row.get("examples") or 0),
                int(row.get("documents") or 0),
            )
        return distribution


def check_reportable(run: TrainingRun) -> None:
    """Only a succeeded run has a model, metrics and an artifact directory to report on."""
    if run.status == "succeeded" and run.artifact_uri:
        return
    reason = f"it {run.status}" if run.status == "failed" else f"it is {run.status}"
    if run.error:
        error = " ".join(run.error.split())
        reason += f" ({error[:200]}{'…' if len(error) > 200 else ''})"
    raise RunStateError(f"training run {run.run_id} has no report: {reason}; only a succeeded run has one")


def load_report_data(settings: Settings, run_id: int, artifacts: ArtifactStore, top: int) -> ReportData:
    """Read everything the report of ``run_id`` shows; refuse a run that did not succeed."""
    database = Database(settings)
    store = ResultsStore(database)
    run = store.get_run(run_id)
    check_reportable(run)
    version = store.get_model_version_by_run(run_id)
    metrics = store.run_metrics(run_id)
    field_data, field_missing = None, None
    if version is not None:
        try:
            field_data = in_the_field(database, version, metrics)
        except DatasetError as exc:
            field_missing = str(exc)
    predictions, missing = _read_predictions(artifacts, run.artifact_uri, run_id, top)
    issues = store.run_label_issues(run_id)
    shown = issues[:LABEL_ISSUES_SHOWN]
    texts, texts_missing = _snapshot_texts(artifacts, run, {issue.annotation_id for issue in shown})
    return ReportData(
        run=run,
        model_version=version,
        metrics=metrics,
        predictions=predictions,
        predictions_missing=missing,
        label_issues=shown,
        label_issue_count=len(issues),
        issue_texts=texts,
        issue_texts_missing=texts_missing,
        encoder=_encoder(artifacts, run.artifact_uri),
        in_the_field=field_data,
        in_the_field_missing=field_missing,
    )


def _read_predictions(
    artifacts: ArtifactStore, artifact_uri: str, run_id: int, top: int
) -> tuple[Predictions | None, str | None]:
    try:
        table = read_predictions(artifacts, artifact_uri)
    except (ArtifactError, pa.ArrowException, OSError, ValueError) as exc:
        return None, f"{PREDICTIONS_FILE} of this run cannot be read: {' '.join(str(exc).split())[:300]}"
    if table is None:
        return None, (
            f"this run's artifact has no {PREDICTIONS_FILE} (it was trained before runs kept their eval "
            f"predictions; `train --from-snapshot {run_id}` retrains it as a new run that has them)"
        )
    missing = [name for name in PREDICTION_COLUMNS if name not in table.column_names]
    if missing:
        return None, f"{PREDICTIONS_FILE} of this run lacks the column(s) {', '.join(missing)}"
    if table.num_rows == 0:
        return None, f"{PREDICTIONS_FILE} of this run is empty"
    confidence = table.column("confidence").to_numpy(zero_copy_only=False).astype(np.float64)
    labels = table.column("label").to_pylist()
    predicted = table.column("predicted_label").to_pylist()
    correct = np.array([a == b for a, b in zip(labels, predicted)], dtype=bool)
    wrong_rows = np.flatnonzero(~correct)
    ids = table.column("annotation_id").to_pylist()
    # Most confident first; equal confidences by annotation id, so the list is stable.
    order = sorted(wrong_rows.tolist(), key=lambda row: (-confidence[row], str(ids[row])))[:top]
    chosen = table.select(list(PREDICTION_COLUMNS)).take(pa.array(order, type=pa.int64())).to_pylist() if order else []
    examples = [
        Example(
            annotation_id=str(row["annotation_id"]),
            document_id=row["document_id"],
            page=row["page"],
            text=str(row["text"]),
            label=str(row["label"]),
            predicted_label=str(row["predicted_label"]),
            confidence=float(row["confidence"]),
            label_probability=float(row["label_probability"]),
        )
        for row in chosen
    ]
    return Predictions(confidence, correct, examples, int(len(wrong_rows))), None


def _snapshot_texts(
    artifacts: ArtifactStore, run: TrainingRun, annotation_ids: set[str]
) -> tuple[dict[str, tuple[int | None, str]], str | None]:
    """Page and text of some examples of the run, read from its snapshot a row group at a time."""
    if not annotation_ids:
        return {}, None
    if not run.snapshot_uri:
        return {}, "the run recorded no snapshot"
    found: dict[str, tuple[int | None, str]] = {}
    wanted = pa.array(sorted(annotation_ids), type=pa.string())
    try:
        with artifacts.open_read(run.snapshot_uri) as handle:
            parquet = pq.ParquetFile(handle)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=["annotation_id", "page", "text"])
                table = table.filter(pc.is_in(table.column("annotation_id"), value_set=wanted))
                for row in table.to_pylist():
                    found[row["annotation_id"]] = (row["page"], row["text"])
                if len(found) == len(annotation_ids):
                    break
    except (ArtifactError, pa.ArrowException, OSError, ValueError) as exc:
        return found, f"the run's snapshot cannot be read: {' '.join(str(exc).split())[:300]}"
    return found, None


def _encoder(artifacts: ArtifactStore, artifact_uri: str) -> str | None:
    """The sentence encoder named in the model's manifest (None when unreadable)."""
    import json

    try:
        manifest = json.loads(artifacts.read_bytes(artifacts.join(artifact_uri, "model.json")))
        name = manifest["embedding_model"]["name"]
        backend = manifest.get("embedding_backend", "torch")
        return f"{name} ({backend})"
    except (ArtifactError, ValueError, KeyError, TypeError):
        return None
