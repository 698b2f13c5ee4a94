"""Box supervision: boxes from masks, pseudo-masks (filled, GrabCut, ignore variants), refinement, loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelwise import create_model
from pixelwise.errors import DataError, PixelwiseError
from pixelwise.recipes.weak import (
    box_object_masks,
    boxes_from_mask,
    pseudo_label_scores,
    pseudo_mask,
    refine_pseudo_mask,
    synthetic_arrays,
    train_from_boxes,
)


def _miou(pred: np.ndarray, truth: np.ndarray, ignore: int = 255) -> float:
    """Plain-numpy mIoU over the classes present in either map (pixels where truth == ignore left out)."""
    keep = truth != ignore
    p, t = pred[keep], truth[keep]
    scores = []
    for c in np.union1d(np.unique(p), np.unique(t)):
        union = np.logical_or(p == c, t == c).sum()
        scores.append(np.logical_and(p == c, t == c).sum() / union)
    return float(np.mean(scores))


def test_boxes_from_hand_made_mask():
    mask = np.zeros((10, 12), dtype=np.int64)
    mask[1:3, 1:4] = 1          # class 1, rows 1-2, cols 1-3
    mask[6:9, 8:11] = 1         # a second class-1 blob
    mask[4, 5] = 3              # class 3: two pixels touching at a corner only
    mask[5, 6] = 3
    mask[0:2, 9:12] = 255       # ignore: no box
    boxes = boxes_from_mask(mask)
    assert boxes.dtype == np.int64
    assert boxes.tolist() == [[1, 1, 4, 3, 1], [8, 6, 11, 9, 1], [5, 4, 7, 6, 3]]
    # 4-connectivity splits the diagonal pair into two one-pixel boxes.
    four = boxes_from_mask(mask, connectivity=4)
    assert four[four[:, 4] == 3].tolist() == [[5, 4, 6, 5, 3], [6, 5, 7, 6, 3]]
    assert boxes_from_mask(mask, min_area=3)[:, 4].tolist() == [1, 1]
    assert boxes_from_mask(np.zeros((4, 4), dtype=np.int64)).shape == (0, 5)


def test_boxes_cover_every_synthetic_object():
    _, masks = synthetic_arrays(6, image_size=48, seed=3)
    for mask in masks:
        boxes = boxes_from_mask(mask)
        covered = np.zeros(mask.shape, dtype=bool)
        for x0, y0, x1, y1, cls in boxes:
            assert (mask[y0:y1, x0:x1] == cls).any()
            # every edge of the box touches the object: the box is tight
            crop = mask[y0:y1, x0:x1] == cls
            assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
            covered[y0:y1, x0:x1] |= mask[y0:y1, x0:x1] == cls
        assert np.array_equal(covered, mask > 0)


def test_filled_pseudo_mask_is_exact_with_small_boxes_on_top():
    boxes = np.array([[2, 2, 5, 5, 1], [0, 0, 8, 6, 2], [6, 4, 10, 9, 3]])
    got = pseudo_mask(None, boxes, mode="filled", height=10, width=10)
    expected = np.zeros((10, 10), dtype=np.int64)
    # Hand-made: the big class-2 box (48 px) first, then class 3 (20 px), then class 1 (9 px).
    for r in range(10):
        for c in range(10):
            if 2 <= r < 5 and 2 <= c < 5:
                expected[r, c] = 1
            elif 4 <= r < 9 and 6 <= c < 10:
                expected[r, c] = 3
            elif r < 6 and c < 8:
                expected[r, c] = 2
    assert np.array_equal(got, expected)


def test_filled_ignore_marks_the_ring():
    boxes = np.array([[0, 0, 10, 10, 4]])
    got = pseudo_mask(None, boxes, mode="filled-ignore", height=12, width=12, inner_fraction=0.36)
    expected = np.zeros((12, 12), dtype=np.int64)
    expected[:10, :10] = 255
    expected[2:8, 2:8] = 4  # sqrt(0.36) * 10 = 6 pixels, centred
    assert np.array_equal(got, expected)


def test_bad_boxes_and_modes_are_rejected():
    with pytest.raises(DataError, match="exclusive"):
        pseudo_mask(None, np.array([[3, 3, 3, 5, 1]]), mode="filled", height=8, width=8)
    with pytest.raises(DataError, match="outside"):
        pseudo_mask(None, np.array([[0, 0, 9, 5, 1]]), mode="filled", height=8, width=8)
    with pytest.raises(PixelwiseError, match="choose one of"):
        pseudo_mask(None, np.array([[0, 0, 4, 4, 1]]), mode="snake", height=8, width=8)
    with pytest.raises(DataError, match="uint8"):
        pseudo_mask(None, np.array([[0, 0, 4, 4, 1]]), mode="grabcut", height=8, width=8)


def test_grabcut_beats_filled_boxes_on_synthetic_images():
    images, masks = synthetic_arrays(12, image_size=48, seed=7)
    filled = np.stack([pseudo_mask(None, boxes_from_mask(m), mode="filled", height=48, width=48) for m in masks])
    grab = np.stack([pseudo_mask(x, boxes_from_mask(m), mode="grabcut") for x, m in zip(images, masks)])
    filled_iou, grab_iou = _miou(filled, masks), _miou(grab, masks)
    assert grab_iou > filled_iou + 0.1, (grab_iou, filled_iou)
    # GrabCut never labels outside the boxes.
    assert np.array_equal(grab > 0, (grab > 0) & (filled > 0))
    # The library's own score agrees with the independent one.
    assert pseudo_label_scores(grab, masks, num_classes=5)["pseudo_miou"] == pytest.approx(grab_iou, abs=1e-6)


def test_grabcut_falls_back_to_the_box_on_a_flat_image():
    image = np.full((32, 32, 3), 120, dtype=np.uint8)
    boxes = np.array([[4, 4, 20, 20, 2]])
    objs = box_object_masks(image, boxes, mode="grabcut")
    assert objs[0].shape == (16, 16) and objs[0].all()
    # grabcut-ignore: pixels inside the box that GrabCut rejects become ignore, not background.
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[:] = (30, 60, 90)
    image[10:20, 10:20] = (240, 200, 10)  # an object filling part of its box
    got = pseudo_mask(image, np.array([[6, 6, 24, 24, 1]]), mode="grabcut-ignore")
    assert set(np.unique(got)) <= {0, 1, 255}
    assert (got[10:20, 10:20] == 1).mean() > 0.9
    assert (got[6:24, 6:24] == 255).any() and (got[:6] == 0).all()


def test_refine_with_the_true_mask_recovers_it_exactly():
    _, masks = synthetic_arrays(5, image_size=48, seed=11)
    for mask in masks:
        boxes = boxes_from_mask(mask)
        initial = box_object_masks(None, boxes, mode="filled")
        refined, resets = refine_pseudo_mask(mask, boxes, initial, min_fraction=0.0)
        assert resets == 0
        assert np.array_equal(refined, mask)


def test_refine_resets_boxes_that_lose_their_object():
    boxes = np.array([[0, 0, 10, 10, 1], [12, 0, 22, 10, 2]])
    initial = box_object_masks(None, boxes, mode="filled")
    pred = np.zeros((12, 24), dtype=np.int64)
    pred[0:3, 0:5] = 1      # 15 % of box 1: below 20 % -> reset to the filled box
    pred[0:5, 12:18] = 2    # 30 % of box 2: kept as predicted
    pred[11, 23] = 2        # outside every box: background whatever the prediction
    refined, resets = refine_pseudo_mask(pred, boxes, initial, min_fraction=0.2)
    expected = np.zeros((12, 24), dtype=np.int64)
    expected[0:10, 0:10] = 1
    expected[0:5, 12:18] = 2
    assert resets == 1 and np.array_equal(refined, expected)
    ignored, _ = refine_pseudo_mask(pred, boxes, initial, min_fraction=0.2, uncertain="ignore")
    assert (ignored[0:10, 12:22][pred[0:10, 12:22] != 2] == 255).all()
    assert (ignored[0:10, 0:10] == 1).all() and ignored[11, 23] == 0


def test_train_from_boxes_runs_rounds_and_scores_pseudo_labels():
    images, masks = synthetic_arrays(16, image_size=32, seed=1)
    val_x, val_y = synthetic_arrays(6, image_size=32, seed=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster than two on a busy machine
    try:
        result = train_from_boxes(train_images=images, train_masks=masks, val_images=val_x, val_masks=val_y,
                                  num_classes=5, pseudo="filled", rounds=1, steps_per_round=8, batch_size=4,
                                  model_factory=lambda: create_model("unet", num_classes=5, base_channels=4,
                                                                     depth=2, norm="batch"))
    finally:
        torch.set_num_threads(threads)
    assert [h["round"] for h in result.history] == [0, 1]
    filled = np.stack([pseudo_mask(None, boxes_from_mask(m), mode="filled", height=32, width=32) for m in masks])
    assert result.history[0]["pseudo_miou"] == pytest.approx(_miou(filled, masks), abs=1e-6)
    assert result.history[0]["pseudo_coverage"] == 1.0
    for h in result.history:
        assert 0.0 <= h["val_miou"] <= 1.0
    # Refined labels obey the box constraint: nothing outside the boxes, classes only from their boxes.
    assert result.pseudo.shape == masks.shape
    assert np.array_equal(result.pseudo > 0, (result.pseudo > 0) & (filled > 0))
    assert isinstance(result.model, torch.nn.Module)


def test_refining_with_a_noisy_prediction_beats_the_filled_start():
    # A stand-in for a trained network: right on 75 % of the pixels, random elsewhere.
    _, masks = synthetic_arrays(10, image_size=48, seed=5)
    rng = np.random.default_rng(0)
    filled, refined = [], []
    for mask in masks:
        boxes = boxes_from_mask(mask)
        initial = box_object_masks(None, boxes, mode="filled")
        pred = np.where(rng.random(mask.shape) < 0.75, mask, rng.integers(0, 5, mask.shape))
        filled.append(pseudo_mask(None, boxes, mode="filled", height=48, width=48))
        refined.append(refine_pseudo_mask(pred, boxes, initial, min_fraction=0.2)[0])
    assert _miou(np.stack(refined), masks) > _miou(np.stack(filled), masks) + 0.1
