"""Label-map cleanup on hand-drawn masks whose correct result is known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelwise.errors import PixelwiseError
from pixelwise.postprocess import (
    clean_mask,
    fill_holes,
    keep_largest_component,
    remove_small_components,
)


def _grid(rows: list[str]) -> np.ndarray:
    """A label map from strings of digits, one string per row ('.' = 255, ignored)."""
    return np.array([[255 if ch == "." else int(ch) for ch in row] for row in rows], dtype=np.int64)


def test_small_component_takes_the_label_around_it():
    mask = _grid([
        "000000",
        "011000",
        "000000",
        "000222",
        "000222",
        "000222",
    ])
    out = remove_small_components(mask, min_size=3)
    np.testing.assert_array_equal(out, _grid(["000000"] * 3 + ["000222"] * 3))
    # Exactly min_size pixels survive: the rule is "strictly fewer".
    np.testing.assert_array_equal(remove_small_components(mask, min_size=2), mask)


def test_speck_on_a_border_goes_to_the_neighbour_it_touches_most():
    mask = _grid([
        "11112222",
        "11112222",
        "11113322",
        "11112222",
    ])
    # The '3' pair's 8-connected ring holds 3 x '1' and 7 x '2'.
    out = remove_small_components(mask, min_size=3)
    expected = mask.copy()
    expected[2, 4:6] = 2
    np.testing.assert_array_equal(out, expected)
    filled = remove_small_components(mask, min_size=3, fill_label=0)
    expected[2, 4:6] = 0
    np.testing.assert_array_equal(filled, expected)
    # Centred on the border the ring holds 5 of each: the tie goes to the smaller label.
    centred = mask.copy()
    centred[2, 3:6] = (3, 3, 2)
    np.testing.assert_array_equal(remove_small_components(centred, min_size=3)[2, 3:5], [1, 1])


def test_nested_small_components_go_together():
    mask = _grid([
        "00000",
        "02220",
        "02120",
        "02220",
        "00000",
    ])
    # Both the 1-pixel '1' and the 8-pixel '2' ring are below 9 pixels: all becomes 0.
    np.testing.assert_array_equal(remove_small_components(mask, min_size=9), np.zeros((5, 5), np.int64))
    # Restricted to class 1 the ring stays and the speck becomes 2.
    only_ones = remove_small_components(mask, min_size=9, classes=[1])
    expected = mask.copy()
    expected[2, 2] = 2
    np.testing.assert_array_equal(only_ones, expected)


def test_connectivity_decides_what_a_component_is():
    mask = _grid([
        "0000",
        "0100",
        "0010",
        "0000",
    ])
    # 8-connected: one component of 2 pixels, kept at min_size=2; 4-connected: two singles.
    np.testing.assert_array_equal(remove_small_components(mask, min_size=2, connectivity=8), mask)
    np.testing.assert_array_equal(remove_small_components(mask, min_size=2, connectivity=4),
                                  np.zeros((4, 4), np.int64))
    with pytest.raises(PixelwiseError, match="connectivity"):
        remove_small_components(mask, min_size=2, connectivity=6)


def test_ignored_pixels_stay_and_never_donate_their_label():
    mask = _grid([
        "......",
        ".1....",
        "......",
        "000000",
    ])
    out = remove_small_components(mask, min_size=2)
    # The speck touches only ignored pixels: nothing to take a label from, so it stays.
    np.testing.assert_array_equal(out, mask)
    mask[2, 1] = 0  # now it touches one background pixel
    out = remove_small_components(mask, min_size=2)
    assert out[1, 1] == 0 and (out == 255).sum() == (mask == 255).sum()


def test_keep_largest_component_per_class():
    mask = _grid([
        "1110000",
        "1110000",
        "0000011",
        "0200000",
        "2220000",
    ])
    out = keep_largest_component(mask)
    expected = mask.copy()
    expected[2, 5:] = 0
    np.testing.assert_array_equal(out, expected)
    # Background split in two by a full-height bar is left alone by default ...
    split = _grid(["00100", "00100", "00100"])
    np.testing.assert_array_equal(keep_largest_component(split), split)
    # ... and reduced (to the first of two equal pieces) when asked for explicitly.
    np.testing.assert_array_equal(keep_largest_component(split, classes=[0], fill_label=9),
                                  _grid(["00199", "00199", "00199"]))


def test_fill_holes_inside_a_class_only():
    mask = _grid([
        "0000000",
        "0111110",
        "0100010",
        "0102010",
        "0100010",
        "0111110",
        "0000000",
    ])
    full = fill_holes(mask)
    expected = mask.copy()
    expected[1:6, 1:6] = 1
    np.testing.assert_array_equal(full, expected)
    # A 9-pixel hole is above max_hole_size=8: left alone (and the '2' survives).
    np.testing.assert_array_equal(fill_holes(mask, max_hole_size=8), mask)
    # Filling class 2's holes or the background's changes nothing / is not done by default.
    np.testing.assert_array_equal(fill_holes(mask, classes=[2]), mask)


def test_fill_holes_connectivity_and_border():
    leaky = _grid([
        "00000",
        "01100",
        "01010",
        "01110",
        "00000",
    ])
    # The region is 8-connected, so the hole is 4-connected and closed: filled.
    closed = leaky.copy()
    closed[2, 2] = 1
    np.testing.assert_array_equal(fill_holes(leaky, connectivity=8), closed)
    # With a 4-connected region the hole leaks out through the diagonal gap.
    np.testing.assert_array_equal(fill_holes(leaky, connectivity=4), leaky)
    # A "hole" open to the image border is outside, not a hole.
    open_edge = _grid(["1101", "1001", "1111"])
    np.testing.assert_array_equal(fill_holes(open_edge), open_edge)


def test_clean_mask_combines_in_order_and_keeps_type():
    mask = _grid([
        "00000000",
        "01111000",
        "01011000",
        "01111003",
        "00000000",
        "00000011",
    ])
    batch = torch.from_numpy(np.stack([mask, mask])).to(torch.int32)
    out = clean_mask(batch, min_size=2, fill_holes=True, largest_only=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int32 and out.shape == batch.shape
    expected = mask.copy()
    expected[2, 2] = 1       # hole filled
    expected[3, 7] = 0       # speck removed
    expected[5, 6:] = 0      # second component of class 1 dropped
    np.testing.assert_array_equal(out[0].numpy(), expected)
    np.testing.assert_array_equal(out[1].numpy(), expected)
    # The input is not modified in place.
    assert batch[0, 2, 2] == 0
    # Nothing asked, nothing changed.
    np.testing.assert_array_equal(clean_mask(mask), mask)


def test_rejects_soft_predictions():
    with pytest.raises(PixelwiseError, match="argmax"):
        remove_small_components(np.zeros((4, 4), np.float32), min_size=2)
    with pytest.raises(PixelwiseError, match="min_size"):
        remove_small_components(np.zeros((4, 4), np.int64), min_size=-1)
