"""Strict CSV reading: every problem is reported with the file, line and column."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from trainer.core.errors import InputFileError


@dataclass(frozen=True)
class CsvData:
    header: list[str]
    rows: list[list[str]]
    lines: list[int]  # the line each row starts on, 1-based

    def column(self, name: str) -> list[str]:
        index = self.header.index(name)
        return [row[index] for row in self.rows]


def read_csv(path: Path, required: tuple[str, ...]) -> CsvData:
    """Read a UTF-8 CSV with a header row.

    Refuses undecodable bytes, NUL bytes, ragged rows, duplicated or missing
    header names, naming the line (1-based, as an editor shows it).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputFileError(
            f"{path}: line {line}, column {column}: not valid UTF-8 (byte 0x{raw[exc.start]:02x})"
        ) from None
    if "\x00" in text:
        offset = text.index("\x00")
        line = text.count("\n", 0, offset) + 1
        column = offset - (text.rfind("\n", 0, offset) + 1) + 1
        raise InputFileError(f"{path}: line {line}, column {column}: NUL byte")

    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader)
    except StopIteration:
        raise InputFileError(f"{path}: the file is empty (expected a header row)") from None
    except csv.Error as exc:
        raise InputFileError(f"{path}: line {reader.line_num}: {exc}") from None
    seen = set()
    for position, name in enumerate(header, start=1):
        if name in seen:
            raise InputFileError(f"{path}: line 1, column {position}: duplicate column {name!r}")
        seen.add(name)
    missing = [name for name in required if name not in seen]
    if missing:
        raise InputFileError(f"{path}: line 1: missing required column(s) {', '.join(missing)}")

    rows, lines = [], []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise InputFileError(f"{path}: line {start}: {exc}") from None
        if not row:
            continue  # a blank line
        if len(row) != len(header):
            raise InputFileError(
                f"{path}: line {start}: {len(row)} fields where the header has {len(header)}"
            )
        rows.append(row)
        lines.append(start)
    return CsvData(header, rows, lines)


def write_csv_atomically(path: Path, header: list[str], rows: list[list[str]]) -> None:
    """Write a CSV via a temporary file in the same directory, so a failure leaves
    no half-written output."""
    temporary = path.with_name(f".{path.name}.partial")
    try:
        with open(temporary, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise InputFileError(f"{path}: cannot write: {exc.strerror or exc}") from exc
