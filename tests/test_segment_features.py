"""The features beyond the text (trainer.model.segment_features, trainer.model.segment_model):
hand-placed pages with known answers, and the neighbour search against a plain
restatement of its definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer.core.errors import DatasetError
from trainer.model.segment_features import (
    DEFAULT_PAGE_SIZE,
    DIRECTIONS,
    LAYOUT_FEATURES,
    NEIGHBOUR_GEOMETRY,
    TEXT_STAT_FEATURES,
    Segments,
    find_neighbours,
    layout_features,
    neighbour_features,
    text_statistics,
)
from trainer.model.segment_model import FeatureSet, document_folds, label_aligned, stage_two_features

NAN = float("nan")


def segments(boxes, document=None, page=None, text_index=None) -> Segments:
    n = len(boxes)
    return Segments(
        np.zeros(n, dtype=np.int64) if document is None else np.asarray(document),
        np.ones(n, dtype=np.int64) if page is None else np.asarray(page),
        np.asarray(boxes, dtype=np.float64).reshape(n, 4),
        np.arange(n) if text_index is None else np.asarray(text_index),
    )


def column(name: str) -> int:
    return LAYOUT_FEATURES.index(name)


def test_layout_is_relative_to_the_page_frame_of_the_largest_box_edges():
    # A form: "Date:" at the top left, its answer right of it, a boxless segment.
    page = segments([[50, 100, 100, 120], [150, 100, 400, 120], [NAN, NAN, NAN, NAN], [60, 300, 200, 500]])
    layout = layout_features(page)
    width, height = 400.0, 500.0  # the largest x1 and y1
    np.testing.assert_allclose(layout[0, column("x0") : column("y1") + 1], [50 / width, 100 / height, 100 / width, 120 / height], rtol=1e-6)
    np.testing.assert_allclose(layout[1, column("width")], 250 / width, rtol=1e-6)
    np.testing.assert_allclose(layout[3, column("centre_y")], 400 / height, rtol=1e-6)
    np.testing.assert_allclose(layout[0, column("log_aspect")], math.log(51 / 21), rtol=1e-6)
    assert layout[:, column("has_box")].tolist() == [1, 1, 0, 1]
    assert not layout[2, column("x0") : column("log_aspect") + 1].any()  # no box: zeros
    # Reading order: the two top segments (left first), the lower one, the boxless one last.
    np.testing.assert_allclose(layout[:, column("reading_rank")], [0, 1 / 3, 1, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(layout[:, column("log_page_segments")], math.log(4), rtol=1e-6)


def test_a_page_without_boxes_uses_letter_size_and_pages_count_within_their_document():
    assert DEFAULT_PAGE_SIZE == (612.0, 792.0)
    three_pages = segments([[NAN] * 4] * 3 + [[0, 0, 10, 10]], document=[0, 0, 0, 1], page=[1, 2, 3, 1])
    layout = layout_features(three_pages)
    np.testing.assert_allclose(layout[:, column("page_position")], [0, 0.5, 1, 0])
    assert layout[:, column("first_page")].tolist() == [1, 0, 0, 1]
    assert layout.shape == (4, len(LAYOUT_FEATURES)) and layout.dtype == np.float32


def test_text_statistics_by_hand():
    stats = text_statistics(["  NAME:  ", "12 ab", "", "   "])
    expected_name = [math.log1p(5), math.log1p(1), 0, 4 / 5, 4 / 5, 1, 1, 1]
    np.testing.assert_allclose(stats[0], expected_name, rtol=1e-6)
    np.testing.assert_allclose(stats[1], [math.log1p(5), math.log1p(2), 2 / 5, 0, 2 / 5, 0, 0, 0], rtol=1e-6)
    assert not stats[2:].any()  # blank texts have no statistics
    assert stats.shape == (4, len(TEXT_STAT_FEATURES))


def test_neighbours_on_a_hand_placed_form():
    page = segments(
        [
            [50, 100, 100, 120],  # 0 "Date:"
            [150, 102, 300, 118],  # 1 its answer, same line, right
            [50, 200, 120, 220],  # 2 "Name:" below "Date:"
            [50, 250, 120, 270],  # 3 below "Name:"
            [400, 100, 450, 160],  # 4 tall, right of 1 (on its line: overlap 16 >= 8)
            [NAN, NAN, NAN, NAN],  # 5 no box: nobody's neighbour, none of its own
        ]
    )
    found = find_neighbours(page)
    as_dict = [dict(zip(DIRECTIONS, row)) for row in found.tolist()]
    assert as_dict[0] == {"left": -1, "right": 1, "above": -1, "below": 2}
    assert as_dict[1] == {"left": 0, "right": 4, "above": -1, "below": -1}
    assert as_dict[2] == {"left": -1, "right": -1, "above": 0, "below": 3}
    assert as_dict[3]["above"] == 2
    assert as_dict[4]["left"] == 1
    assert found[5].tolist() == [-1] * 4 and 5 not in found


def test_neighbours_stay_on_their_page_and_ties_go_to_the_earlier_row():
    boxes = [[0, 0, 10, 10], [20, 0, 30, 10], [20, 0, 30, 10], [0, 0, 10, 10]]
    page = segments(boxes, document=[0, 0, 0, 1], page=[1, 1, 1, 1])
    found = find_neighbours(page)
    assert found[0, DIRECTIONS.index("right")] == 1  # 1 and 2 are equally near: the earlier row
    assert found[3].tolist() == [-1] * 4  # the same box in another document is no neighbour
    other_page = segments(boxes[:2], page=[1, 2])
    assert (find_neighbours(other_page) == -1).all()


def reference_neighbours(page: Segments) -> np.ndarray:
    """The definition of find_neighbours, one pair at a time."""
    result = np.full((len(page), 4), -1)
    for s in range(len(page)):
        if np.isnan(page.boxes[s]).any():
            continue
        sx0, sy0, sx1, sy1 = page.boxes[s]
        best = [(math.inf, -1)] * 4
        for t in range(len(page)):
            same_page = (page.document[t], page.page[t]) == (page.document[s], page.page[s])
            if t == s or not same_page or np.isnan(page.boxes[t]).any():
                continue
            tx0, ty0, tx1, ty1 = page.boxes[t]
            same_line = min(sy1, ty1) - max(sy0, ty0) >= 0.5 * min(sy1 - sy0, ty1 - ty0)
            overlaps_x = min(sx1, tx1) - max(sx0, tx0) > 0
            candidates = [
                (same_line and (tx0 + tx1) / 2 < sx0, sx0 - tx1),
                (same_line and (tx0 + tx1) / 2 > sx1, tx0 - sx1),
                (overlaps_x and (ty0 + ty1) / 2 < sy0, sy0 - ty1),
                (overlaps_x and (ty0 + ty1) / 2 > sy1, ty0 - sy1),
            ]
            for direction, (qualifies, gap) in enumerate(candidates):
                if qualifies and gap < best[direction][0]:
                    best[direction] = (gap, t)
        result[s] = [t for _, t in best]
    return result


coordinate = st.integers(min_value=0, max_value=60).map(float)


@st.composite
def pages(draw):
    n = draw(st.integers(min_value=1, max_value=40))
    boxes = []
    for _ in range(n):
        if draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()):
            boxes.append([NAN] * 4)
            continue
        x0, y0 = draw(coordinate), draw(coordinate)
        boxes.append([x0, y0, x0 + draw(coordinate), y0 + draw(coordinate)])
    document = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    page = draw(st.lists(st.integers(1, 2), min_size=n, max_size=n))
    return segments(boxes, document=document, page=page)


@settings(max_examples=150, deadline=None)
@given(pages())
def test_find_neighbours_matches_its_definition(page):
    np.testing.assert_array_equal(find_neighbours(page), reference_neighbours(page))


def test_a_crowded_page_is_compared_in_blocks_with_the_same_result(monkeypatch):
    rng = np.random.default_rng(3)
    corners = rng.integers(0, 500, size=(90, 2)).astype(float)
    sizes = rng.integers(1, 40, size=(90, 2))
    page = segments(np.hstack([corners, corners + sizes]))
    whole = find_neighbours(page)
    monkeypatch.setattr("trainer.model.segment_features._PAIR_BLOCK_ROWS", 7)
    np.testing.assert_array_equal(find_neighbours(page), whole)
    np.testing.assert_array_equal(whole, reference_neighbours(page))


def test_neighbour_features_describe_the_neighbour_never_its_label():
    page = segments([[50, 100, 100, 120], [150, 100, 400, 130]], text_index=[0, 1])
    found = find_neighbours(page)
    per_text = np.array([[1.0, 2.0], [3.0, 4.0]])
    per_row = np.array([[0.9, 0.1], [0.2, 0.8]])
    features = neighbour_features(page, found, per_text, per_row)
    width = len(NEIGHBOUR_GEOMETRY) + 4
    assert features.shape == (2, len(DIRECTIONS) * width)
    right = features[0, DIRECTIONS.index("right") * width : (DIRECTIONS.index("right") + 1) * width]
    frame_w = 400.0
    expected = [1, 50 / frame_w, 250 / frame_w, 30 / 130, math.log(31 / 21), 100 / frame_w, 3, 4, 0.2, 0.8]
    np.testing.assert_allclose(right, expected, rtol=1e-6)
    left_of_first = features[0, : width]
    assert not left_of_first.any()  # no neighbour: all zeros, the indicator too


def test_stage_two_input_follows_the_switches():
    page = segments([[50, 100, 100, 120], [150, 100, 400, 130]], text_index=[0, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    stats = text_statistics(["Date:", "1/2/93"])
    widths = {
        FeatureSet(layout=False, neighbours=False): 2 + len(TEXT_STAT_FEATURES),
        FeatureSet(layout=True, neighbours=False): 2 + len(TEXT_STAT_FEATURES) + len(LAYOUT_FEATURES),
        FeatureSet(layout=True, neighbours=True): 2 + len(TEXT_STAT_FEATURES) + len(LAYOUT_FEATURES)
        + 4 * (len(NEIGHBOUR_GEOMETRY) + len(TEXT_STAT_FEATURES) + 2),
    }
    for features, width in widths.items():
        assert stage_two_features(features, page, probabilities, stats).shape == (2, width)
    with pytest.raises(ValueError, match="at least one text model"):
        FeatureSet(embedding=False, char_ngrams=False)
    assert not FeatureSet(char_ngrams=False, layout=False, neighbours=False).stacked
    assert FeatureSet(layout=False, neighbours=False).stacked  # two text models need a second stage


def test_document_folds_keep_a_document_together_and_leave_eval_out():
    document = np.array([0, 0, 1, 1, 2, 3, 3, 4, 5, 6])
    is_train = np.array([1, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    folds = document_folds(document, is_train, 3, seed=1)
    assert (folds[~is_train] == -1).all()
    for code in np.unique(document[is_train]):
        assert len(set(folds[document == code])) == 1
    per_fold = [len(set(document[folds == fold])) for fold in range(3)]
    assert sorted(per_fold) == [1, 2, 2]  # 5 documents dealt into 3 folds
    np.testing.assert_array_equal(folds, document_folds(document, is_train, 3, seed=1))
    assert int(document_folds(document, is_train, 50, seed=1).max()) == 4  # at most one fold per document
    with pytest.raises(DatasetError, match="has 1"):
        document_folds(np.array([0, 0, 1]), np.array([True, True, False]), 5, seed=1)


def test_label_aligned_fills_classes_a_fold_never_saw():
    probabilities = np.array([[0.25, 0.75]])
    aligned = label_aligned(probabilities, ["b", "d"], ["a", "b", "c", "d"])
    np.testing.assert_array_equal(aligned, [[0, 0.25, 0, 0.75]])
