"""ConfusionMatrix against numpy counts and hand-worked scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pixelwise.errors import DataError
from pixelwise.metrics import ConfusionMatrix

IGNORE = 255


def _random_batch(seed: int, num_classes: int = 5, shape=(3, 7, 9)):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < 0.15] = IGNORE
    logits = torch.randn((shape[0], num_classes, *shape[1:]), generator=generator)
    return logits, target


def _np_confusion(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    keep = target != IGNORE
    np.add.at(matrix, (target[keep], pred[keep]), 1)
    return matrix


def test_matrix_matches_numpy_with_ignored_pixels():
    logits, target = _random_batch(seed=0)
    pred = logits.argmax(dim=1)
    cm = ConfusionMatrix(num_classes=5, ignore_index=IGNORE)
    cm.update(pred, target)
    expected = _np_confusion(pred.numpy(), target.numpy(), 5)
    assert cm.matrix.dtype == torch.int64
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    assert cm.matrix.sum().item() == (target != IGNORE).sum().item()


def test_matrix_matches_numpy_for_volumes_and_uint8_masks():
    # uint8 masks: target * num_classes would wrap around at 256 if not widened.
    num_classes = 40
    generator = torch.Generator().manual_seed(1)
    target = torch.randint(0, num_classes, (2, 3, 4, 5), generator=generator).to(torch.uint8)
    target[0, 0, 0] = IGNORE
    pred = torch.randint(0, num_classes, target.shape, generator=generator)
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)
    expected = _np_confusion(pred.numpy(), target.numpy().astype(np.int64), num_classes)
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)


# Hand-worked example, 4 classes, class 3 absent from both prediction and ground truth.
#   target = 0 0 0 1 1 2 255      pred = 0 0 1 1 2 2 0   (the last pixel is ignored)
#   matrix (rows gt, cols pred):  gt0: [2 1 0 0]  gt1: [0 1 1 0]  gt2: [0 0 1 0]  gt3: 0
#   TP = [2, 1, 1, 0], GT = [3, 2, 1, 0], PR = [2, 2, 2, 0], T = 6
#   IoU  = [2/3, 1/3, 1/2, nan]      mIoU  = (2/3 + 1/3 + 1/2) / 3 = 1/2
#   Dice = [4/5, 2/4, 2/3, nan]      mDice = (4/5 + 1/2 + 2/3) / 3 = 59/90
#   Acc  = [2/3, 1/2, 1,   nan]      mAcc  = (2/3 + 1/2 + 1) / 3 = 13/18
#   pixel acc = 4/6 = 2/3
#   fwIoU = 3/6 * 2/3 + 2/6 * 1/3 + 1/6 * 1/2 = 12/36 + 4/36 + 3/36 = 19/36
HAND_TARGET = torch.tensor([[0, 0, 0, 1, 1, 2, IGNORE]])
HAND_PRED = torch.tensor([[0, 0, 1, 1, 2, 2, 0]])


def _hand_cm() -> ConfusionMatrix:
    cm = ConfusionMatrix(num_classes=4)
    cm.update(HAND_PRED, HAND_TARGET)
    return cm


def test_hand_worked_scores():
    cm = _hand_cm()
    np.testing.assert_array_equal(
        cm.matrix.numpy(), [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    )
    nan = math.nan
    np.testing.assert_allclose(cm.iou().numpy(), [2 / 3, 1 / 3, 1 / 2, nan], rtol=1e-12)
    np.testing.assert_allclose(cm.dice().numpy(), [4 / 5, 1 / 2, 2 / 3, nan], rtol=1e-12)
    np.testing.assert_allclose(cm.class_accuracy().numpy(), [2 / 3, 1 / 2, 1, nan], rtol=1e-12)
    assert cm.iou().dtype == torch.float64
    assert cm.miou() == pytest.approx(1 / 2, rel=1e-12)
    assert cm.mean_dice() == pytest.approx(59 / 90, rel=1e-12)
    assert cm.mean_accuracy() == pytest.approx(13 / 18, rel=1e-12)
    assert cm.pixel_accuracy() == pytest.approx(2 / 3, rel=1e-12)
    assert cm.fwiou() == pytest.approx(19 / 36, rel=1e-12)


def test_compute_returns_plain_python_values():
    scores = _hand_cm().compute()
    assert set(scores) == {
        "iou", "dice", "class_accuracy", "miou", "mean_dice", "pixel_accuracy",
        "mean_accuracy", "fwiou",
    }
    assert isinstance(scores["iou"], list) and len(scores["iou"]) == 4
    assert all(type(v) is float for v in scores["iou"] + scores["dice"])
    assert math.isnan(scores["iou"][3]) and math.isnan(scores["class_accuracy"][3])
    assert scores["miou"] == pytest.approx(1 / 2)
    assert scores["fwiou"] == pytest.approx(19 / 36)


def test_class_predicted_but_absent_from_ground_truth():
    # target = 0 0 1 1, pred = 0 2 1 1: class 2 never occurs in the ground truth.
    # GT = [2, 2, 0], PR = [1, 2, 1], TP = [1, 2, 0]
    # IoU = [1/2, 1, 0] -> counted in the mean: mIoU = 1/2;  Acc = [1/2, 1, nan] -> 3/4.
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([[0, 2, 1, 1]]), torch.tensor([[0, 0, 1, 1]]))
    np.testing.assert_allclose(cm.iou().numpy(), [0.5, 1.0, 0.0])
    assert cm.miou() == pytest.approx(0.5)
    assert math.isnan(cm.class_accuracy()[2].item())
    assert cm.mean_accuracy() == pytest.approx(0.75)
    # fwIoU weights by ground-truth frequency only: 2/4 * 1/2 + 2/4 * 1 = 3/4.
    assert cm.fwiou() == pytest.approx(0.75)


def test_empty_matrix_scores_are_nan():
    scores = ConfusionMatrix(num_classes=3).compute()
    for key in ("miou", "mean_dice", "pixel_accuracy", "mean_accuracy", "fwiou"):
        assert math.isnan(scores[key]), key


def test_logits_give_the_same_matrix_as_their_argmax():
    logits, target = _random_batch(seed=2)
    from_logits = ConfusionMatrix(5)
    from_logits.update(logits, target)
    from_labels = ConfusionMatrix(5)
    from_labels.update(logits.argmax(dim=1), target)
    assert torch.equal(from_logits.matrix, from_labels.matrix)
    assert from_logits.matrix.sum() > 0


def test_two_batches_equal_one_concatenated_batch():
    logits_a, target_a = _random_batch(seed=3)
    logits_b, target_b = _random_batch(seed=4, shape=(2, 7, 9))
    twice = ConfusionMatrix(5)
    twice.update(logits_a, target_a)
    twice.update(logits_b, target_b)
    once = ConfusionMatrix(5)
    once.update(torch.cat([logits_a, logits_b]), torch.cat([target_a, target_b]))
    assert torch.equal(twice.matrix, once.matrix)
    assert twice.miou() == once.miou()


def test_merge_adds_counts():
    logits_a, target_a = _random_batch(seed=5)
    logits_b, target_b = _random_batch(seed=6)
    a, b, both = ConfusionMatrix(5), ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(logits_a, target_a)
    b.update(logits_b, target_b)
    both.update(logits_a, target_a)
    both.update(logits_b, target_b)
    assert a.merge(b) is a
    assert torch.equal(a.matrix, both.matrix)
    with pytest.raises(ValueError, match="num_classes"):
        a.merge(ConfusionMatrix(4))


def test_reset_clears_counts():
    cm = _hand_cm()
    cm.reset()
    assert cm.matrix.sum().item() == 0


def test_all_reduce_without_distributed_is_a_no_op():
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())
    cm = _hand_cm()
    before = cm.matrix.clone()
    assert cm.all_reduce() is cm
    assert torch.equal(cm.matrix, before)


@pytest.mark.parametrize("value", [7, -1])
def test_label_out_of_range_raises_data_error_with_value(value):
    cm = ConfusionMatrix(num_classes=4, ignore_index=IGNORE)
    target = HAND_TARGET.clone()
    target[0, 2] = value
    with pytest.raises(DataError) as info:
        cm.update(HAND_PRED, target)
    assert f"label {value}" in str(info.value)
    assert "set num_classes or ignore_index" in str(info.value)
    assert cm.matrix.sum().item() == 0  # nothing half-counted


def test_ignore_index_none_counts_every_pixel_and_rejects_255():
    cm = ConfusionMatrix(num_classes=4, ignore_index=None)
    with pytest.raises(DataError, match="label 255"):
        cm.update(HAND_PRED, HAND_TARGET)
    cm.update(HAND_PRED[:, :6], HAND_TARGET[:, :6])
    assert cm.matrix.sum().item() == 6


def test_prediction_out_of_range_is_an_error():
    cm = ConfusionMatrix(num_classes=3)
    with pytest.raises(ValueError, match="label 5"):
        cm.update(torch.tensor([[0, 5]]), torch.tensor([[0, 1]]))


@pytest.mark.parametrize(
    "pred_shape, target_shape",
    [((2, 4, 5), (2, 4, 6)), ((2, 3, 4, 5), (2, 4, 6)), ((2, 2, 4, 5), (2, 4, 5))],
)
def test_shape_mismatch_names_both_shapes(pred_shape, target_shape):
    cm = ConfusionMatrix(num_classes=3)
    pred = torch.zeros(pred_shape, dtype=torch.float32 if len(pred_shape) == 4 else torch.long)
    with pytest.raises(ValueError) as info:
        cm.update(pred, torch.zeros(target_shape, dtype=torch.long))
    assert str(pred_shape) in str(info.value) and str(target_shape) in str(info.value)


def test_format_table_shows_names_percentages_and_dash_for_nan():
    table = _hand_cm().format_table(["road", "car", "person", "sky"])
    for name in ("road", "car", "person", "sky"):
        assert name in table
    sky_row = next(line for line in table.splitlines() if line.startswith("sky"))
    assert sky_row.split()[1:] == ["-", "-", "-"]
    road_row = next(line for line in table.splitlines() if line.startswith("road"))
    assert road_row.split()[1:] == ["66.67", "80.00", "66.67"]
    assert "mIoU 50.00" in table
    with pytest.raises(ValueError, match="3 names"):
        _hand_cm().format_table(["a", "b", "c"])


def test_negative_ignore_index():
    # ignore_index=-1 must not reach bincount, which rejects negative indices.
    cm = ConfusionMatrix(num_classes=4, ignore_index=-1)
    cm.update(HAND_PRED, HAND_TARGET.masked_fill(HAND_TARGET == IGNORE, -1))
    assert torch.equal(cm.matrix, _hand_cm().matrix)
