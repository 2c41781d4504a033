"""The legacy CSV export, read into the same examples the database snapshot holds.

Before the pipeline, teams trained from a CSV export with one row per annotation:

    annotation_id, document_id, page, text, label, status[, any other columns]

A row is a training example when its status is ``accepted`` and neither its label
nor its text is blank (CONTRACT §2: empty, or only spaces, tabs, newlines,
carriage returns, form feeds and vertical tabs). Label and text are kept exactly
as stored. The split comes from a :class:`~trainer.data.split_rule.SplitRule`, so the
examples fingerprint exactly as the same annotations read from
``datasets.training_examples`` do.

Every problem raises :class:`~trainer.core.errors.InputFileError` in one line naming
the file, the line (where the row starts) and the column (its 1-based position
in the header).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from trainer.core.errors import InputFileError
from trainer.data.csv_io import read_csv
from trainer.data.dataset import EXAMPLE_SCHEMA, sort_examples
from trainer.data.split_rule import SplitRule

REQUIRED_COLUMNS = ("annotation_id", "document_id", "page", "text", "label", "status")
STATUSES = ("pending", "accepted", "rejected")
BLANK_CHARACTERS = " \t\n\r\f\v"  # CONTRACT §2; other Unicode spaces are content
_PAGE = re.compile(r"[0-9]+")
_INT32_MAX = 2**31 - 1
_SHOWN = 60  # characters of a bad value quoted in a message

@dataclass(frozen=True)
class LegacyCsv:
    """What a legacy export holds: its examples, and which file bytes they came from."""

    examples: pa.Table  # the columns and types of datasets.training_examples, by annotation_id
    sha256: str  # of the file's bytes
    rows: int  # data rows read (examples or not)


def _is_blank(value: str) -> bool:
    return value.strip(BLANK_CHARACTERS) == ""


def read_legacy_csv(path: Path, rule: SplitRule) -> LegacyCsv:
    """Read and check a legacy export; return its training examples, split by ``rule``."""
    path = Path(path)
    raw = _read_bytes(path)
    if raw in (b"", b"\xef\xbb\xbf"):
        raise InputFileError(
            f"{path}: line 1: the file is empty (expected a header row with {', '.join(REQUIRED_COLUMNS)})"
        )
    data = read_csv(path, REQUIRED_COLUMNS)
    if _read_bytes(path) != raw:
        # The hash must describe the bytes the examples came from.
        raise InputFileError(f"{path}: the file changed while it was being read; read it again when it is stable")

    position = {name: data.header.index(name) for name in REQUIRED_COLUMNS}
    # Checked left to right, so a row with several problems reports the first one.
    checked = sorted(("annotation_id", "document_id", "page", "status"), key=position.__getitem__)
    first_line: dict[str, int] = {}
    columns: dict[str, list] = {name: [] for name in ("annotation_id", "document_id", "page", "text", "label")}

    for row, line in zip(data.rows, data.lines):
        for name in checked:
            problem = _problem(name, row[position[name]])
            if problem:
                raise InputFileError(f"{path}: line {line}, column {position[name] + 1}: {problem}")
        annotation_id = row[position["annotation_id"]]
        if annotation_id in first_line:
            raise InputFileError(
                f"{path}: line {line}, column {position['annotation_id'] + 1}: duplicate annotation_id "
                f"{_show(annotation_id)} (first on line {first_line[annotation_id]})"
            )
        first_line[annotation_id] = line

        text, label = row[position["text"]], row[position["label"]]
        if row[position["status"]] != "accepted" or _is_blank(label) or _is_blank(text):
            continue
        columns["annotation_id"].append(annotation_id)
        columns["document_id"].append(row[position["document_id"]])
        columns["page"].append(int(row[position["page"]]))
        columns["text"].append(text)
        columns["label"].append(label)

    # The export has no boxes and no acceptance event: those columns are null.
    schema = EXAMPLE_SCHEMA
    columns["split"] = [rule.split_of(document_id) for document_id in columns["document_id"]]
    count = len(columns["annotation_id"])
    arrays = [
        pa.array(columns[field.name], type=field.type) if field.name in columns else pa.nulls(count, type=field.type)
        for field in schema
    ]
    examples = pa.Table.from_arrays(arrays, schema=schema)
    return LegacyCsv(
        examples=sort_examples(examples),
        sha256=hashlib.sha256(raw).hexdigest(),
        rows=len(data.rows),
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc


def _problem(column: str, value: str) -> str | None:
    """What is wrong with a checked field, or None."""
    if column in ("annotation_id", "document_id"):
        return f"empty {column}" if value == "" else None
    if column == "status":
        if value in STATUSES:
            return None
        return f"unknown status {_show(value)} (expected pending, accepted or rejected)"
    # page
    if not _PAGE.fullmatch(value) or int(value) < 1:
        return f"page {_show(value)} is not an integer >= 1"
    if int(value) > _INT32_MAX:
        return f"page {_show(value)} is too large (at most {_INT32_MAX})"
    return None


def _show(value: str) -> str:
    """A value quoted for a one-line message (escapes newlines; long values cut)."""
    if len(value) > _SHOWN:
        return repr(value[:_SHOWN]) + "..."
    return repr(value)
