"""Cutting a padded batch into groups of similar length: which rows go together, and how far each is cut."""

from __future__ import annotations

import numpy as np

from bertserve_server.encoder import length_groups, row_extents


def test_extent_is_one_past_the_last_masked_in_position() -> None:
    mask = np.array(
        [
            [1, 1, 1, 0, 0, 0],  # a sentence of 3 tokens, padded
            [0, 1, 1, 1, 0, 0],  # -mask_cls_sep: [CLS] and [SEP] masked, [SEP] at position 4
            [1, 1, 1, 1, 1, 1],  # full
            [0, 0, 0, 0, 0, 0],  # all masked: attends to every position, keeps the full width
        ],
        np.int32,
    )
    assert row_extents(mask).tolist() == [3, 4, 6, 6]


def test_rows_are_grouped_longest_first_and_split_where_length_halves() -> None:
    extents = np.array([10, 100, 12, 90, 40, 11, 95, 50])
    groups = length_groups(extents, min_tokens=80)
    assert [g.tolist() for g in groups] == [[1, 6, 3], [7, 4], [2, 5, 0]]
    # every row exactly once
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(extents)))


def test_a_group_keeps_growing_until_it_is_big_enough_for_the_matmuls() -> None:
    extents = np.array([100, 10, 10, 10])
    assert [g.tolist() for g in length_groups(extents, min_tokens=1000)] == [[0, 1, 2, 3]]
    assert [g.tolist() for g in length_groups(extents, min_tokens=100)] == [[0], [1, 2, 3]]


def test_equal_lengths_stay_one_group_and_empty_batches_none() -> None:
    assert [g.tolist() for g in length_groups(np.full(5, 25), min_tokens=1)] == [[0, 1, 2, 3, 4]]
    assert length_groups(np.zeros(0, np.int64), min_tokens=1) == []
