"""What a segment's page says about it, beside its text: layout, text statistics
and the nearest neighbouring segments (issue 7; docs/MODELS.md has what each adds).

Everything is computed from the contract's columns (document_id, page, x0, y0, x1,
y1, text), the same way for the examples of a training run and for the rows given
to ``predict``, and never from a label, so it works for any app's data:

- **Page frame.** The contract has no page size, so a page's width W and height H
  are the largest x1 and y1 of its boxes (612 × 792, US Letter, when it has none).
- **Layout** (:data:`LAYOUT_FEATURES`): the box relative to the frame, its size,
  its place in reading order, how crowded the page is, and where the page is in
  its document. A segment without a box has zeros and ``has_box`` = 0.
- **Text statistics** (:data:`TEXT_STAT_FEATURES`), per distinct text: length,
  words, the shares of digits, upper case and letters, and the colon that ends
  most questions.
- **Neighbours**: the nearest other segment of the same page to the left and to
  the right on the same line, and above and below overlapping it horizontally
  (:func:`find_neighbours`). An answer sits right of or below its question, so a
  neighbour's text says much about a segment's label. Which segments are
  neighbours depends only on the boxes; what a neighbour contributes is its
  geometry relative to the segment, its text statistics and the text models'
  probabilities of its text (:func:`neighbour_features`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_PAGE_SIZE = (612.0, 792.0)  # US Letter in PDF points
LAYOUT_FEATURES = (
    "has_box", "x0", "y0", "x1", "y1", "width", "height", "centre_x", "centre_y",
    "log_width_pt", "log_height_pt", "log_aspect", "reading_rank", "log_page_segments",
    "page_position", "first_page",
)  # fmt: skip
TEXT_STAT_FEATURES = (
    "log_length", "log_words", "digit_share", "upper_share", "letter_share",
    "ends_with_colon", "has_colon", "all_upper",
)  # fmt: skip
DIRECTIONS = ("left", "right", "above", "below")
NEIGHBOUR_GEOMETRY = ("present", "gap", "width", "height", "log_height_ratio", "x_offset")
# Rows of a page compared with all of its rows at once; bounds the pairwise arrays.
_PAIR_BLOCK_ROWS = 512


@dataclass(frozen=True)
class Segments:
    """Where each segment is: one entry per example or per input row.

    Rows are in a fixed order (annotation_id for a run's examples, file order for
    a CSV), and every tie between neighbours goes to the earlier row.
    """

    document: np.ndarray  # int: one code per document
    page: np.ndarray  # int: 1-based; 0 when unknown
    boxes: np.ndarray  # float (n, 4): x0, y0, x1, y1 in points, NaN when unknown
    text_index: np.ndarray  # int: the segment's text among the distinct texts

    def __len__(self) -> int:
        return len(self.text_index)

    def page_groups(self) -> list[np.ndarray]:
        """The row indices of each (document, page), each in row order."""
        if len(self) == 0:
            return []
        key = self.document.astype(np.int64) * (int(self.page.max()) + 1) + self.page
        order = np.argsort(key, kind="stable")
        boundaries = np.flatnonzero(np.diff(key[order])) + 1
        return np.split(order, boundaries)


def _page_frame(boxes: np.ndarray) -> tuple[float, float]:
    present = ~np.isnan(boxes).any(axis=1)
    if not present.any():
        return DEFAULT_PAGE_SIZE
    width = float(np.nanmax(boxes[present, 2]))
    height = float(np.nanmax(boxes[present, 3]))
    return (width if width > 0 else DEFAULT_PAGE_SIZE[0], height if height > 0 else DEFAULT_PAGE_SIZE[1])


def layout_features(segments: Segments) -> np.ndarray:
    """(n, len(LAYOUT_FEATURES)) float32."""
    result = np.zeros((len(segments), len(LAYOUT_FEATURES)), dtype=np.float32)
    last_page = _last_page_of_document(segments)
    for rows in segments.page_groups():
        boxes = segments.boxes[rows]
        width_pt, height_pt = _page_frame(boxes)
        has_box = ~np.isnan(boxes).any(axis=1)
        x0, y0, x1, y1 = (np.nan_to_num(boxes[:, i]) for i in range(4))
        w, h = np.maximum(x1 - x0, 0.0), np.maximum(y1 - y0, 0.0)
        block = result[rows]
        block[:, 0] = has_box
        block[:, 1:5] = np.column_stack([x0 / width_pt, y0 / height_pt, x1 / width_pt, y1 / height_pt])
        block[:, 5], block[:, 6] = w / width_pt, h / height_pt
        block[:, 7], block[:, 8] = (x0 + x1) / 2 / width_pt, (y0 + y1) / 2 / height_pt
        block[:, 9], block[:, 10] = np.log1p(w), np.log1p(h)
        block[:, 11] = np.log((w + 1.0) / (h + 1.0))
        # Reading order: top to bottom, then left to right; boxless segments last.
        reading = np.lexsort((np.where(has_box, x0, np.inf), np.where(has_box, y0, np.inf)))
        rank = np.empty(len(rows), dtype=np.float64)
        rank[reading] = np.arange(len(rows))
        block[:, 12] = rank / max(len(rows) - 1, 1)
        block[:, 13] = math.log(len(rows))
        page = segments.page[rows]
        block[:, 14] = np.where(last_page[rows] > 1, (page - 1) / np.maximum(last_page[rows] - 1, 1), 0.0)
        block[:, 15] = page <= 1
        block[~has_box, 1:12] = 0.0
        result[rows] = block
    return result


def _last_page_of_document(segments: Segments) -> np.ndarray:
    codes, inverse = np.unique(segments.document, return_inverse=True)
    last = np.zeros(len(codes), dtype=np.int64)
    np.maximum.at(last, inverse, segments.page)
    return last[inverse]


def text_statistics(texts: list[str]) -> np.ndarray:
    """(len(texts), len(TEXT_STAT_FEATURES)) float32, on each text without its outer whitespace."""
    result = np.zeros((len(texts), len(TEXT_STAT_FEATURES)), dtype=np.float32)
    for row, raw in enumerate(texts):
        text = raw.strip()
        length = len(text)
        if length == 0:
            continue
        letters = sum(character.isalpha() for character in text)
        result[row] = (
            math.log1p(length),
            math.log1p(len(text.split())),
            sum(character.isdigit() for character in text) / length,
            sum(character.isupper() for character in text) / length,
            letters / length,
            text.endswith(":"),
            ":" in text,
            letters > 0 and text.isupper(),
        )
    return result


def find_neighbours(segments: Segments) -> np.ndarray:
    """(n, 4) int: the row of the nearest segment in each of :data:`DIRECTIONS`, -1 for none.

    A candidate is another segment of the same document and page with a box. It is
    on the segment's line when their vertical overlap is at least half the smaller
    height; ``left``/``right`` take the nearest candidate on the line whose centre
    is left of the segment's x0 (right of its x1), by horizontal gap.
    ``above``/``below`` take the nearest candidate that overlaps the segment
    horizontally and whose centre is above its y0 (below its y1), by vertical gap.
    """
    result = np.full((len(segments), len(DIRECTIONS)), -1, dtype=np.int64)
    for rows in segments.page_groups():
        boxes = segments.boxes[rows]
        has_box = ~np.isnan(boxes).any(axis=1)
        if has_box.sum() < 2:
            continue
        candidates = rows[has_box]
        t = boxes[has_box]
        tx0, ty0, tx1, ty1 = (t[:, i][None, :] for i in range(4))
        tcx, tcy = (tx0 + tx1) / 2, (ty0 + ty1) / 2
        within = np.flatnonzero(has_box)
        for start in range(0, len(within), _PAIR_BLOCK_ROWS):
            own = within[start : start + _PAIR_BLOCK_ROWS]
            s = boxes[own]
            sx0, sy0, sx1, sy1 = (s[:, i][:, None] for i in range(4))
            overlap_y = np.minimum(sy1, ty1) - np.maximum(sy0, ty0)
            same_line = overlap_y >= 0.5 * np.minimum(sy1 - sy0, ty1 - ty0)
            overlap_x = (np.minimum(sx1, tx1) - np.maximum(sx0, tx0)) > 0
            itself = rows[own][:, None] == candidates[None, :]
            gaps = (
                np.where(same_line & (tcx < sx0), sx0 - tx1, np.inf),
                np.where(same_line & (tcx > sx1), tx0 - sx1, np.inf),
                np.where(overlap_x & (tcy < sy0), sy0 - ty1, np.inf),
                np.where(overlap_x & (tcy > sy1), ty0 - sy1, np.inf),
            )
            for direction, gap in enumerate(gaps):
                gap[itself] = np.inf
                nearest = gap.argmin(axis=1)  # the first of equal gaps: the earlier row
                found = np.isfinite(gap[np.arange(len(own)), nearest])
                result[rows[own[found]], direction] = candidates[nearest[found]]
    return result


def neighbour_features(
    segments: Segments, neighbours: np.ndarray, per_text: np.ndarray, per_row: np.ndarray | None = None
) -> np.ndarray:
    """(n, 4 × (len(NEIGHBOUR_GEOMETRY) + per-text columns + per-row columns)) float32.

    For each direction: whether there is a neighbour, the gap to it over the page's
    width (left/right) or height (above/below), its size over the page's, the log
    of its height over the segment's, its x0 offset, then ``per_text`` of its text
    (e.g. text statistics) and ``per_row`` of its row (e.g. text-model
    probabilities of its text that must be per row because they are cross-fitted).
    All zeros when there is no neighbour.
    """
    extra = per_text.shape[1] + (0 if per_row is None else per_row.shape[1])
    width = len(NEIGHBOUR_GEOMETRY) + extra
    result = np.zeros((len(segments), len(DIRECTIONS) * width), dtype=np.float32)
    frame = np.zeros((len(segments), 2))
    for rows in segments.page_groups():
        frame[rows] = _page_frame(segments.boxes[rows])
    boxes = np.nan_to_num(segments.boxes)
    for direction, name in enumerate(DIRECTIONS):
        other = neighbours[:, direction]
        has = other >= 0
        if not has.any():
            continue
        rows, other = np.flatnonzero(has), other[has]
        s, t = boxes[rows], boxes[other]
        page_w, page_h = frame[rows, 0], frame[rows, 1]
        if name == "left":
            gap = (s[:, 0] - t[:, 2]) / page_w
        elif name == "right":
            gap = (t[:, 0] - s[:, 2]) / page_w
        elif name == "above":
            gap = (s[:, 1] - t[:, 3]) / page_h
        else:
            gap = (t[:, 1] - s[:, 3]) / page_h
        s_height, t_height = np.maximum(s[:, 3] - s[:, 1], 0), np.maximum(t[:, 3] - t[:, 1], 0)
        columns = [
            np.ones(len(rows)),
            gap,
            np.maximum(t[:, 2] - t[:, 0], 0) / page_w,
            t_height / page_h,
            np.log((t_height + 1.0) / (s_height + 1.0)),
            (t[:, 0] - s[:, 0]) / page_w,
        ]
        block = np.column_stack(columns)
        parts = [block, per_text[segments.text_index[other]]]
        if per_row is not None:
            parts.append(per_row[other])
        offset = direction * width
        result[rows, offset : offset + width] = np.hstack(parts)
    return result
