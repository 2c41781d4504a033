"""Label segments from a CSV with a stored model version."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.core.blob_store import ArtifactStore
from trainer.core.db import Database
from trainer.core.errors import InputFileError
from trainer.core.settings import Settings
from trainer.data.csv_io import CsvData, read_csv, write_csv_atomically
from trainer.model.classifier import SegmentClassifier, SegmentRows
from trainer.results.store import ModelVersion, ResultsStore

REQUIRED_COLUMNS = ("text",)
OPTIONAL_COLUMNS = ("document_id", "page", "x0", "y0", "x1", "y1")
NUMERIC_COLUMNS = ("page", "x0", "y0", "x1", "y1")
OUTPUT_COLUMNS = ("predicted_label", "confidence")


@dataclass(frozen=True)
class PredictionReport:
    model_version: ModelVersion
    rows: int
    output: Path


def load_model_version(settings: Settings, model_name: str, version: int | None) -> tuple[ModelVersion, SegmentClassifier]:
    """The model version row and its verified classifier (latest when version is None)."""
    database = Database(settings)
    row = ResultsStore(database).get_model_version(model_name, version)
    classifier = SegmentClassifier.load(ArtifactStore(settings.artifacts_url), row.artifact_uri, row.artifact_sha256)
    return row, classifier


def predict_csv(
    settings: Settings,
    input_path: Path,
    output_path: Path,
    model_name: str,
    version: int | None,
    progress: bool | None = None,
) -> PredictionReport:
    """Write the input rows plus ``predicted_label`` and ``confidence`` to output_path."""
    data = read_csv(input_path, REQUIRED_COLUMNS)
    clash = [name for name in OUTPUT_COLUMNS if name in data.header]
    if clash:
        raise InputFileError(f"{input_path}: line 1: the input already has column(s) {', '.join(clash)}")
    _check_numeric(input_path, data)
    model_version, classifier = load_model_version(settings, model_name, version)

    labels, confidences = classifier.predict(data.column("text"), progress=progress, rows=segment_rows(data))
    output_rows = [row + [label, f"{confidence:.6f}"] for row, label, confidence in zip(data.rows, labels, confidences)]
    write_csv_atomically(output_path, data.header + list(OUTPUT_COLUMNS), output_rows)
    return PredictionReport(model_version, len(data.rows), output_path)


def segment_rows(data: CsvData) -> SegmentRows:
    """Where the rows' segments are, from the optional columns: layout and neighbour
    features see what is given (rows of one document_id and page are one page)."""

    def numbers(name: str) -> list[float]:
        if name not in data.header:
            return [math.nan] * len(data.rows)
        return [float(value) if value.strip() else math.nan for value in data.column(name)]

    document_ids = data.column("document_id") if "document_id" in data.header else None
    pages = [int(float(value)) if value.strip() else None for value in data.column("page")] if "page" in data.header else None
    boxes = np.column_stack([numbers(name) for name in ("x0", "y0", "x1", "y1")]) if data.rows else None
    return SegmentRows(document_ids, pages, boxes)


def _check_numeric(path: Path, data: CsvData) -> None:
    """Optional layout columns, when present, hold numbers or nothing."""
    for name in NUMERIC_COLUMNS:
        if name not in data.header:
            continue
        column = data.header.index(name)
        for line, row in zip(data.lines, data.rows):
            value = row[column].strip()
            if not value:
                continue
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise InputFileError(f"{path}: line {line}, column {column + 1} ({name}): {value!r} is not a number")
