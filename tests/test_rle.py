"""Run-length encoding (competition convention) and the ``rle_csv`` reader."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pixelwise.config import DataCfg
from pixelwise.data import build_dataset
from pixelwise.data.io import write_image
from pixelwise.data.rle import RleCsvDataset, in_holdout, rle_decode, rle_encode
from pixelwise.errors import DataError

# The 3x3 example written out by hand. Pixels are numbered down the columns, from 1:
#   1 4 7
#   2 5 8
#   3 6 9
# Foreground at pixels 1, 2 (first column), 5 (centre) and 9 (bottom right).
HAND_MASK = np.array([[1, 0, 0],
                      [1, 1, 0],
                      [0, 0, 1]], dtype=bool)
HAND_RLE = "1 2 5 1 9 1"


def _runs_by_loop(mask: np.ndarray) -> list[int]:
    """Reference encoder: walk the pixels one by one in column-major order."""
    runs: list[int] = []
    height, width = mask.shape
    number = 0
    inside = False
    for c in range(width):
        for r in range(height):
            number += 1
            if mask[r, c] and not inside:
                runs += [number, 0]
                inside = True
            if mask[r, c]:
                runs[-1] += 1
            else:
                inside = False
    return runs


def test_hand_worked_example():
    assert rle_encode(HAND_MASK) == HAND_RLE
    np.testing.assert_array_equal(rle_decode(HAND_RLE, (3, 3)), HAND_MASK)
    # Row-major numbering (Carvana): 1 2 3 / 4 5 6 / 7 8 9 -> pixels 1, 4, 5, 9.
    assert rle_encode(HAND_MASK, order="C") == "1 1 4 2 9 1"
    np.testing.assert_array_equal(rle_decode("1 1 4 2 9 1", (3, 3), order="C"), HAND_MASK)


def test_runs_continue_across_columns():
    # A run that goes off the bottom of column 0 continues at the top of column 1.
    mask = np.zeros((4, 3), dtype=bool)
    mask[2:, 0] = True
    mask[:1, 1] = True
    assert rle_encode(mask) == "3 3"


@pytest.mark.parametrize("value", ["", "  ", None, float("nan"), "nan", "NaN"])
def test_empty_values_decode_to_empty_mask(value):
    assert not rle_decode(value, (5, 7)).any()
    assert rle_decode(value, (5, 7)).shape == (5, 7)


@pytest.mark.parametrize("mask", [
    np.zeros((4, 5), bool), np.ones((4, 5), bool), np.eye(1, dtype=bool),
    np.pad(np.ones((1, 1), bool), ((3, 0), (4, 0))),  # bottom-right pixel only
    np.pad(np.ones((4, 1), bool), ((0, 0), (0, 4))),  # left edge column
])
def test_edge_cases_round_trip(mask):
    assert rle_encode(mask) == " ".join(map(str, _runs_by_loop(mask)))
    np.testing.assert_array_equal(rle_decode(rle_encode(mask), mask.shape), mask)


@settings(max_examples=150, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 12), st.integers(1, 12))), st.sampled_from(["F", "C"]))
def test_round_trip_property(mask, order):
    encoded = rle_encode(mask, order=order)
    np.testing.assert_array_equal(rle_decode(encoded, mask.shape, order=order), mask)
    if order == "F":
        assert encoded == " ".join(map(str, _runs_by_loop(mask)))


@pytest.mark.parametrize("rle, message", [
    ("1 2 5", "odd count"),
    ("1 2 x 1", "not an integer"),
    ("1.5 2", "not an integer"),
    ("8 3", "past the last pixel"),
    ("5 2 1 1", "before the end of run"),
    ("1 3 2 1", "before the end of run"),
    ("0 2", "1-based"),
    ("1 0", "length 0"),
])
def test_malformed_rle(rle, message):
    with pytest.raises(DataError, match=message):
        rle_decode(rle, (3, 3), where="x.csv line 2 (image a.png)")


def _write_dataset(root, rows, header=("ImageId", "EncodedPixels"), images=("a.png", "b.png", "c.png")):
    (root / "train_images").mkdir(parents=True)
    for name in images:
        write_image(root / "train_images" / name, np.full((4, 3, 3), 100, np.uint8))
    with open(root / "train.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def test_dataset_or_rows_and_empty(tmp_path):
    # Image a: two rows OR-ed; image b: empty RLE. Images are 4 (H) x 3 (W).
    _write_dataset(tmp_path, [("a.png", "1 2"), ("a.png", "12 1"), ("b.png", "")])
    ds = build_dataset(DataCfg(dataset="rle_csv", root=str(tmp_path), num_classes=2, augment="none"), "train",
                       train=False)
    assert len(ds) == 2
    sample = ds[0]
    expected = np.zeros((4, 3), np.int64)
    expected[0:2, 0] = 1  # pixels 1, 2
    expected[3, 2] = 1  # pixel 12 = last row, last column
    assert sample["name"] == "a.png"
    np.testing.assert_array_equal(sample["mask"].numpy(), expected)
    assert sample["image"].shape == (3, 4, 3)
    assert ds[1]["mask"].sum() == 0


def test_dataset_class_column_and_all_images(tmp_path):
    _write_dataset(tmp_path, [("a", "1 4", "1"), ("a", "3 3", "3")], header=("id", "rle", "cls"))
    cfg = DataCfg(dataset="rle_csv", root=str(tmp_path), num_classes=4, augment="none",
                  args={"id_column": "id", "rle_column": "rle", "class_column": "cls", "all_images": True})
    ds = build_dataset(cfg, "train", train=False)
    assert sorted(ds.ids) == ["a", "b.png", "c.png"]  # "a" found by stem
    mask = ds[ds.ids.index("a")]["mask"].numpy()
    # Column 0 is pixels 1..4, column 1 is 5..8. Class 1 paints 1..4, class 3 (later row) 3..5.
    np.testing.assert_array_equal(mask[:, 0], [1, 1, 3, 3])
    np.testing.assert_array_equal(mask[:, 1], [3, 0, 0, 0])
    assert ds[ds.ids.index("c.png")]["mask"].sum() == 0


def test_val_fraction_partitions_images(tmp_path):
    names = [f"img{i}.png" for i in range(20)]
    _write_dataset(tmp_path, [(n, "1 1") for n in names], images=names)
    cfg = DataCfg(dataset="rle_csv", root=str(tmp_path), num_classes=2, augment="none", args={"val_fraction": 0.3})
    train, val = build_dataset(cfg, "train", train=False), build_dataset(cfg, "val", train=False)
    assert set(train.ids) | set(val.ids) == set(names) and not set(train.ids) & set(val.ids)
    assert set(val.ids) == {n for n in names if in_holdout(n, 0.3)}


def test_malformed_row_names_line_and_image(tmp_path):
    _write_dataset(tmp_path, [("a.png", "1 2"), ("b.png", "1 2 3")])
    ds = RleCsvDataset(tmp_path / "train.csv", tmp_path / "train_images", num_classes=2)
    with pytest.raises(DataError, match=r"line 3 \(image b.png\).*odd count"):
        ds.load(1)


def test_bad_csv_errors(tmp_path):
    _write_dataset(tmp_path, [("missing.png", "1 1")])
    with pytest.raises(DataError, match="missing.png"):
        RleCsvDataset(tmp_path / "train.csv", tmp_path / "train_images", num_classes=2)
    with pytest.raises(DataError, match="no column"):
        RleCsvDataset(tmp_path / "train.csv", tmp_path / "train_images", num_classes=2, rle_column="Pixels")
    with pytest.raises(DataError, match=r"no column.*ClassId"):
        RleCsvDataset(tmp_path / "train.csv", tmp_path / "train_images", num_classes=2, class_column="ClassId")


def test_class_out_of_range(tmp_path):
    _write_dataset(tmp_path, [("a.png", "1 1", "5")], header=("ImageId", "EncodedPixels", "ClassId"))
    with pytest.raises(DataError, match="class 5.*num_classes to at least 6"):
        RleCsvDataset(tmp_path / "train.csv", tmp_path / "train_images", num_classes=3, class_column="ClassId")
