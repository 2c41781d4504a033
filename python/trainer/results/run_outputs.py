"""What a run keeps of its predictions beside the model: ``predictions.parquet``.

One row per eval example (the examples the model never saw): its accepted label,
what the model predicts, how sure it is, and the probability it gives the accepted
label. The run's report reads it (the most confidently wrong examples, the exact
risk–coverage curve); it is stored in the model's directory but is not one of the
model's files (model.json does not list it, a model download does not carry it).
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trainer.core.blob_store import ArtifactStore

PREDICTIONS_FILE = "predictions.parquet"
PREDICTIONS_SCHEMA = pa.schema(
    [
        ("annotation_id", pa.string()),
        ("document_id", pa.string()),
        ("page", pa.int32()),
        ("text", pa.string()),
        ("label", pa.string()),
        ("predicted_label", pa.string()),
        ("confidence", pa.float64()),
        ("label_probability", pa.float64()),
    ]
)


def write_predictions(store: ArtifactStore, path: str, inputs, fitted) -> str:
    """Write the eval examples' predictions (``inputs``: TrainingInputs, ``fitted``:
    FittedModel) to ``path`` in the store; return its URI."""
    rows = np.flatnonzero(~inputs.is_train)
    probabilities = fitted.probabilities[rows]
    classes = np.asarray(fitted.classes, dtype=object)
    labels = inputs.labels(~inputs.is_train)
    column_of = {label: column for column, label in enumerate(fitted.classes)}
    label_column = np.array([column_of.get(label, -1) for label in labels], dtype=np.int64)
    label_probability = np.where(
        label_column >= 0, probabilities[np.arange(len(rows)), np.maximum(label_column, 0)], 0.0
    )
    texts = np.asarray(inputs.texts, dtype=object)
    take = pa.array(rows)
    table = pa.table(
        {
            "annotation_id": inputs.annotation_id.take(take),
            "document_id": inputs.document_id.take(take),
            "page": pa.array(inputs.page[rows], pa.int32()),
            "text": pa.array(texts[inputs.text_index[rows]].tolist(), pa.string()),
            "label": pa.array(labels.tolist(), pa.string()),
            "predicted_label": pa.array(classes[probabilities.argmax(axis=1)].tolist(), pa.string())
            if len(rows)
            else pa.array([], pa.string()),
            "confidence": pa.array(probabilities.max(axis=1).astype(np.float64) if len(rows) else [], pa.float64()),
            "label_probability": pa.array(label_probability.astype(np.float64), pa.float64()),
        },
        schema=PREDICTIONS_SCHEMA,
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    uri, _ = store.write_bytes(path, buffer.getvalue())
    return uri


def read_predictions(store: ArtifactStore, artifact_uri: str) -> pa.Table | None:
    """The run's predictions, or None for a run from before they were kept."""
    uri = store.join(artifact_uri, PREDICTIONS_FILE)
    if not store.exists(store.relative_path(uri)):
        return None
    return pq.read_table(io.BytesIO(store.read_bytes(uri)))


# The segments that joined the examples' pages (trainer.model.fit_inputs.PageContext),
# kept so that a retrain from the run's snapshot sees the same pages. Like the
# predictions, not one of the model's files; its sha256 is in the run's params.
PAGE_CONTEXT_FILE = "page_context.parquet"
PAGE_CONTEXT_SHA256_PARAM = "page_context_sha256"


def write_page_context(store: ArtifactStore, path: str, table: pa.Table) -> tuple[str, str]:
    """Store the page context's rows at ``path``; return its URI and sha256."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return store.write_bytes(path, buffer.getvalue())


def read_page_context(store: ArtifactStore, run) -> pa.Table | None:
    """The page context a run (TrainingRun) stored, verified against its recorded
    sha256; None when it stored none (no live pages, or a run from before)."""
    from trainer.core.blob_store import sha256_hex
    from trainer.core.errors import ArtifactError

    sha256 = run.params.get(PAGE_CONTEXT_SHA256_PARAM)
    if not sha256 or not run.artifact_uri:
        return None
    uri = store.join(run.artifact_uri, PAGE_CONTEXT_FILE)
    data = store.read_bytes(uri)
    if sha256_hex(data) != sha256:
        raise ArtifactError(f"page context {uri} does not match its recorded sha256 {sha256[:12]}…: it was altered")
    return pq.read_table(io.BytesIO(data))
