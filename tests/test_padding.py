import numpy as np
import pytest
import torch

from exsearch.generation.padding import pad_rows, shared_left_padding

ROWS = [[5, 6, 7], [8], [9, 10]]


def test_left_padding_right_aligns_each_row():
    ids, mask = pad_rows(ROWS, pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


def test_right_padding_left_aligns_each_row():
    ids, mask = pad_rows(ROWS, pad_id=0, side="right")
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [9, 10, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]


@pytest.mark.parametrize("side", ["left", "right"])
def test_the_mask_marks_each_rows_own_tokens_and_the_rest_is_pad(side):
    ids, mask = pad_rows(ROWS, pad_id=-1, side=side, width=5)
    for row, own_ids, own_mask in zip(ROWS, ids, mask, strict=True):
        assert own_ids[own_mask == 1].tolist() == row
        assert (own_ids[own_mask == 0] == -1).all()


@pytest.mark.parametrize("side", ["left", "right"])
def test_ids_and_mask_are_int64_of_shape_rows_by_width(side):
    ids, mask = pad_rows(ROWS, pad_id=0, side=side, width=6)
    assert ids.shape == mask.shape == (3, 6)
    assert ids.dtype == mask.dtype == torch.long


def test_width_defaults_to_the_longest_row():
    assert pad_rows(ROWS, pad_id=0)[0].shape == (3, 3)
    assert pad_rows([], pad_id=0)[0].shape == (0, 0)


def test_an_empty_row_is_all_padding():
    ids, mask = pad_rows([[4, 4], []], pad_id=1, side="left")
    assert ids.tolist() == [[4, 4], [1, 1]]
    assert mask.tolist() == [[1, 1], [0, 0]]


def test_numpy_rows_pad_like_lists():
    as_numpy = [np.array(r, dtype=np.int64) for r in ROWS]
    for side in ("left", "right"):
        for got, want in zip(pad_rows(as_numpy, 0, side), pad_rows(ROWS, 0, side), strict=True):
            assert torch.equal(got, want)


def test_an_unknown_side_is_an_error():
    with pytest.raises(ValueError, match="side must be 'left' or 'right'"):
        pad_rows(ROWS, pad_id=0, side="middle")


def test_shared_left_padding_counts_the_columns_every_row_masks():
    _, mask = pad_rows([[5, 6], [7, 8, 9]], pad_id=0, side="left", width=5)
    assert shared_left_padding(mask) == 2
    assert shared_left_padding(mask[:1]) == 3
    assert shared_left_padding(torch.zeros((2, 4), dtype=torch.long)) == 4
