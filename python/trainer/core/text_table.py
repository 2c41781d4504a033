"""Columns for the terminal, each as wide as its widest cell.

Values are never cut: two labels that share a prefix (``Prod_quantity_ordered``,
``Prod_quantity_shipped``) must print differently, so a column widens to fit
instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(rows: Iterable[Sequence[object]], align: str, indent: str = "  ", gap: str = "  ") -> list[str]:
    """The lines of ``rows`` (the first may be a header) in columns.

    ``align`` has one character per column: ``<`` left, ``>`` right. The last
    column is not padded when it is left-aligned, so lines carry no trailing blanks.
    """
    cells = [["" if value is None else str(value) for value in row] for row in rows]
    if not cells:
        return []
    if any(len(row) != len(align) for row in cells):
        raise ValueError(f"every row needs {len(align)} cells, as many as align {align!r} has")
    widths = [max(len(row[column]) for row in cells) for column in range(len(align))]
    lines = []
    for row in cells:
        parts = [
            value.rjust(width) if side == ">" else value.ljust(width)
            for value, width, side in zip(row, widths, align, strict=True)
        ]
        lines.append((indent + gap.join(parts)).rstrip())
    return lines
