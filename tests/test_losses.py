"""Losses against reference formulas written out here in numpy, not the same torch calls."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixelwise.errors import ConfigError, DataError
from pixelwise.losses import CombinedLoss, CrossEntropyLoss, DiceLoss, build_loss
from pixelwise.registry import LOSSES

IGNORE = 255


def _logits_and_target(shape=(2, 3, 4, 5), seed=0, ignore_fraction=0.2):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    ignored = torch.rand(target.shape, generator=generator) < ignore_fraction
    target[ignored] = IGNORE
    assert ignored.any() and not ignored.all()
    return logits, target


def _np_log_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _np_bce(x: np.ndarray, t: np.ndarray, pos_weight: float = 1.0) -> np.ndarray:
    # log(sigmoid(x)) = -log1p(exp(-x)), log(1 - sigmoid(x)) = -log1p(exp(x))
    return pos_weight * t * np.log1p(np.exp(-x)) + (1 - t) * np.log1p(np.exp(x))


# ---------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 4, 3, 4, 5)])  # 2D and 3D
def test_ce_multiclass_matches_weighted_log_softmax(shape):
    logits, target = _logits_and_target(shape)
    weights = [0.5, 2.0, 1.0] + [3.0] * (shape[1] - 3)

    x = logits.numpy()
    t = target.numpy()
    log_p = _np_log_softmax(x, axis=1)
    valid = t != IGNORE
    t_safe = np.where(valid, t, 0)
    picked = np.take_along_axis(log_p, t_safe[:, None], axis=1)[:, 0]
    w = np.asarray(weights)[t_safe]
    per_pixel = np.where(valid, -w * picked, 0.0)
    expected_mean = per_pixel.sum() / (w * valid).sum()

    loss = CrossEntropyLoss(class_weights=weights, ignore_index=IGNORE)
    np.testing.assert_allclose(loss(logits, target).item(), expected_mean, rtol=1e-10)
    loss_sum = CrossEntropyLoss(class_weights=weights, reduction="sum")
    np.testing.assert_allclose(loss_sum(logits, target).item(), per_pixel.sum(), rtol=1e-10)
    loss_none = CrossEntropyLoss(class_weights=weights, reduction="none")
    np.testing.assert_allclose(loss_none(logits, target).numpy(), per_pixel, rtol=1e-10)


def test_ce_unweighted_mean_is_over_non_ignored_pixels():
    logits, target = _logits_and_target()
    log_p = _np_log_softmax(logits.numpy(), axis=1)
    t = target.numpy()
    valid = t != IGNORE
    picked = np.take_along_axis(log_p, np.where(valid, t, 0)[:, None], axis=1)[:, 0]
    expected = -(picked * valid).sum() / valid.sum()
    np.testing.assert_allclose(CrossEntropyLoss()(logits, target).item(), expected, rtol=1e-10)


def test_ce_label_smoothing_matches_formula():
    eps = 0.2
    logits, target = _logits_and_target()
    log_p = _np_log_softmax(logits.numpy(), axis=1)
    t = target.numpy()
    valid = t != IGNORE
    num_classes = logits.shape[1]
    picked = np.take_along_axis(log_p, np.where(valid, t, 0)[:, None], axis=1)[:, 0]
    # Smoothed target: (1 - eps) on the true class plus eps / C on every class.
    per_pixel = -(1 - eps) * picked - eps / num_classes * log_p.sum(axis=1)
    expected = (per_pixel * valid).sum() / valid.sum()
    loss = CrossEntropyLoss(label_smoothing=eps)
    np.testing.assert_allclose(loss(logits, target).item(), expected, rtol=1e-10)


@pytest.mark.parametrize("channel_dim", [True, False])
def test_ce_binary_matches_numpy_bce(channel_dim):
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 1, 4, 5, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 4, 5), generator=generator)
    target[0, 0, :3] = IGNORE
    x = logits[:, 0].numpy()
    t = target.numpy()
    valid = t != IGNORE
    per_pixel = _np_bce(x, np.where(valid, t, 0), pos_weight=3.0)
    expected = (per_pixel * valid).sum() / valid.sum()

    loss = CrossEntropyLoss(mode="binary", pos_weight=3.0)
    value = loss(logits if channel_dim else logits[:, 0], target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)


def test_ce_multilabel_matches_numpy_bce_and_ignores_elements():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 3, 4, 4), generator=generator).double()
    target[1, 2, 0, :] = IGNORE
    x = logits.numpy()
    t = target.numpy()
    valid = t != IGNORE
    per_element = _np_bce(x, np.where(valid, t, 0))
    expected = (per_element * valid).sum() / valid.sum()
    value = CrossEntropyLoss(mode="multilabel")(logits, target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)


# ---------------------------------------------------------------- dice


def _np_dice_loss(probs, onehot, valid, smooth, squared=False, per_image=False, classes=None):
    """probs, onehot: (N, K, *S); valid: (N, 1 or K, *S)."""
    p = probs * valid
    g = onehot * valid
    axes = tuple(range(2, p.ndim)) if per_image else (0, *range(2, p.ndim))
    inter = (p * g).sum(axis=axes)
    if squared:
        card = (p**2).sum(axis=axes) + (g**2).sum(axis=axes)
    else:
        card = p.sum(axis=axes) + g.sum(axis=axes)
    dice = (2 * inter + smooth) / (card + smooth)
    if classes is not None:
        dice = dice[..., classes]
    return 1 - dice.mean()


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"smooth": 0.0},
        {"squared": True},
        {"per_image": True},
        {"classes": [1, 2]},
        {"per_image": True, "classes": [0], "smooth": 0.5},
    ],
)
def test_dice_multiclass_matches_numpy(options):
    logits, target = _logits_and_target((2, 3, 4, 5), seed=3)
    x = logits.numpy()
    t = target.numpy()
    probs = np.exp(_np_log_softmax(x, axis=1))
    valid = (t != IGNORE)[:, None]
    onehot = (np.where(t == IGNORE, -1, t)[:, None] == np.arange(3)[None, :, None, None])
    expected = _np_dice_loss(
        probs, onehot.astype(float), valid,
        smooth=options.get("smooth", 1.0),
        squared=options.get("squared", False),
        per_image=options.get("per_image", False),
        classes=options.get("classes"),
    )
    value = DiceLoss(**options)(logits, target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)


def test_dice_binary_hand_worked_with_ignored_pixel():
    # Probabilities given directly. Pixel 4 is ignored; counting it would add 0.9 to |P|.
    # |P ∩ G| = 0.8 + 0.6 = 1.4, |P| = 0.8 + 0.2 + 0.6 = 1.6, |G| = 2
    # Dice = 2 * 1.4 / (1.6 + 2) = 2.8 / 3.6 = 7/9, loss = 2/9.
    probs = torch.tensor([[[0.8, 0.2, 0.6, 0.9]]], dtype=torch.float64)  # (N=1, H=1, W=4)
    target = torch.tensor([[[1, 0, 1, IGNORE]]])
    loss = DiceLoss(mode="binary", smooth=0.0, from_logits=False)
    np.testing.assert_allclose(loss(probs, target).item(), 2 / 9, rtol=1e-12)
    np.testing.assert_allclose(loss(probs[:, None], target).item(), 2 / 9, rtol=1e-12)


def test_dice_multilabel_matches_numpy():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 2, (2, 3, 4, 4), generator=generator).double()
    target[0, 1, :2] = IGNORE
    t = target.numpy()
    valid = t != IGNORE
    probs = 1 / (1 + np.exp(-logits.numpy()))
    expected = _np_dice_loss(probs, np.where(valid, t, 0), valid, smooth=1.0)
    value = DiceLoss(mode="multilabel")(logits, target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)


def test_dice_absent_class_with_smooth_still_contributes():
    # Class 2 is absent from the target; with smooth > 0 putting mass on it raises the loss.
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    target[0, 0] = 1
    low = torch.tensor([5.0, 5.0, -5.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2).clone()
    high = low.clone()
    high[:, 2] = 4.0
    loss = DiceLoss(smooth=1.0)
    assert loss(high, target) > loss(low, target)


def test_dice_gradcheck_float64():
    logits, target = _logits_and_target((1, 3, 3, 4), seed=5)
    logits.requires_grad_(True)
    for options in ({}, {"squared": True, "per_image": True}, {"smooth": 0.0}):
        loss = DiceLoss(**options)
        assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,))
    binary_target = (target > 0).long().masked_fill(target == IGNORE, IGNORE)
    binary = DiceLoss(mode="binary")
    assert torch.autograd.gradcheck(lambda x: binary(x, binary_target), (logits[:, :1],))


def test_dice_ignored_pixels_get_no_gradient():
    logits, target = _logits_and_target(seed=6)
    logits.requires_grad_(True)
    DiceLoss()(logits, target).backward()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    assert torch.any(logits.grad[~ignored] != 0)


# ---------------------------------------------------------------- robustness


MODES_AND_INPUTS = [
    ("multiclass", (2, 3, 4, 4), (2, 4, 4)),
    ("binary", (2, 1, 4, 4), (2, 4, 4)),
    ("multilabel", (2, 3, 4, 4), (2, 3, 4, 4)),
]


@pytest.mark.parametrize("mode, logit_shape, target_shape", MODES_AND_INPUTS)
@pytest.mark.parametrize("loss_class", [CrossEntropyLoss, DiceLoss])
def test_all_ignored_gives_zero_and_backward_works(loss_class, mode, logit_shape, target_shape):
    logits = torch.randn(logit_shape, requires_grad=True)
    target = torch.full(target_shape, IGNORE)
    value = loss_class(mode=mode)(logits, target)
    assert value.item() == 0.0
    value.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


@pytest.mark.parametrize("mode, logit_shape, target_shape", MODES_AND_INPUTS)
@pytest.mark.parametrize("loss_class", [CrossEntropyLoss, DiceLoss])
def test_extreme_logits_are_finite(loss_class, mode, logit_shape, target_shape):
    generator = torch.Generator().manual_seed(7)
    signs = torch.randint(0, 2, logit_shape, generator=generator) * 2 - 1
    logits = (1e4 * signs).float().requires_grad_(True)
    high = 1 if mode == "binary" else logit_shape[1] if mode == "multiclass" else 2
    target = torch.randint(0, high, target_shape, generator=generator)
    value = loss_class(mode=mode)(logits, target)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    if loss_class is CrossEntropyLoss:
        # Confidently wrong pixels cost about 2e4 (multiclass) or 1e4 (BCE), not inf.
        assert value.item() > 100


def test_ce_half_precision_sum_does_not_overflow():
    # 512 * 512 pixels * ~0.7 nats is far above float16's maximum of 65504.
    logits = torch.zeros(1, 2, 512, 512, dtype=torch.float16)
    target = torch.zeros(1, 512, 512, dtype=torch.long)
    value = CrossEntropyLoss(reduction="sum")(logits, target)
    np.testing.assert_allclose(value.item(), 512 * 512 * np.log(2), rtol=1e-3)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "loss, logits_shape, target_shape, expected",
    [
        (CrossEntropyLoss(), (2, 3, 4, 5), (2, 4, 6), (2, 4, 5)),
        (DiceLoss(), (2, 3, 4, 5), (2, 5, 4), (2, 4, 5)),
        (CrossEntropyLoss(mode="binary"), (2, 1, 4, 5), (2, 4, 6), (2, 1, 4, 6)),
        (CrossEntropyLoss(mode="multilabel"), (2, 3, 4, 5), (2, 2, 4, 5), (2, 3, 4, 5)),
    ],
)
def test_shape_mismatch_names_both_shapes(loss, logits_shape, target_shape, expected):
    target = torch.zeros(target_shape, dtype=torch.long)
    with pytest.raises(ValueError) as info:
        loss(torch.zeros(logits_shape), target)
    assert str(expected) in str(info.value)
    assert str(target_shape) in str(info.value)


def test_float_target_in_multiclass_is_rejected():
    with pytest.raises(ValueError, match="float32"):
        CrossEntropyLoss()(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2))


@pytest.mark.parametrize("loss_class", [CrossEntropyLoss, DiceLoss])
def test_label_out_of_range_names_the_value(loss_class):
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    target[0, 1, 1] = 7
    with pytest.raises(DataError, match="label 7"):
        loss_class()(torch.zeros(1, 3, 2, 2), target)


def test_unrescaled_binary_mask_is_rejected():
    target = torch.tensor([[[0, 255], [255, 0]]])
    with pytest.raises(DataError, match="value 255"):
        CrossEntropyLoss(mode="binary", ignore_index=None)(torch.zeros(1, 2, 2), target)


@pytest.mark.parametrize(
    "options, word",
    [
        ({"mode": "multi"}, "multi"),
        ({"mode": "binary", "class_weights": [1.0, 2.0]}, "class_weights"),
        ({"pos_weight": 2.0}, "pos_weight"),
        ({"reduction": "avg"}, "avg"),
        ({"mode": "binary", "label_smoothing": 0.1}, "label_smoothing"),
    ],
)
def test_ce_bad_options_fail_at_construction(options, word):
    with pytest.raises(ConfigError, match=word):
        CrossEntropyLoss(**options)


def test_class_weights_length_must_match_classes():
    loss = CrossEntropyLoss(class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="2 entries"):
        loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


# ---------------------------------------------------------------- combined / build_loss


def test_combined_loss_is_the_weighted_sum_and_logs_terms():
    logits, target = _logits_and_target(seed=8)
    ce, dice = CrossEntropyLoss(), DiceLoss()
    combined = CombinedLoss({"ce": ce, "dice": dice}, {"ce": 2.0, "dice": 0.5})
    total = combined(logits, target)
    ce_value, dice_value = ce(logits, target).item(), dice(logits, target).item()
    np.testing.assert_allclose(total.item(), 2.0 * ce_value + 0.5 * dice_value, rtol=1e-10)
    assert set(combined.last_terms) == {"ce", "dice"}
    np.testing.assert_allclose(combined.last_terms["ce"], ce_value, rtol=1e-6)
    np.testing.assert_allclose(combined.last_terms["dice"], dice_value, rtol=1e-6)
    assert all(type(v) is float for v in combined.last_terms.values())


def test_combined_loss_rejects_non_scalar_terms():
    combined = CombinedLoss({"ce": CrossEntropyLoss(reduction="none")})
    with pytest.raises(ValueError, match="'ce'"):
        combined(*_logits_and_target())


def test_build_loss_combines_specs():
    logits, target = _logits_and_target(seed=9)
    loss = build_loss(
        [
            {"name": "ce", "class_weights": [1.0, 2.0, 3.0]},
            {"name": "dice", "weight": 0.25, "per_image": True},
            {"name": "dice", "classes": [1, 2]},
        ]
    )
    assert isinstance(loss, CombinedLoss)
    assert list(loss.terms) == ["ce", "dice", "dice_1"]
    expected = (
        CrossEntropyLoss(class_weights=[1.0, 2.0, 3.0])(logits, target)
        + 0.25 * DiceLoss(per_image=True)(logits, target)
        + DiceLoss(classes=[1, 2])(logits, target)
    )
    np.testing.assert_allclose(loss(logits, target).item(), expected.item(), rtol=1e-10)


def test_build_loss_passes_ignore_index_and_mode_unless_spec_sets_them():
    loss = build_loss(
        [{"name": "ce"}, {"name": "dice", "ignore_index": 0}], ignore_index=7, mode="binary"
    )
    assert loss.terms["ce"].ignore_index == 7 and loss.terms["ce"].mode == "binary"
    assert loss.terms["dice"].ignore_index == 0 and loss.terms["dice"].mode == "binary"


def test_build_loss_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        build_loss([{"name": "focall"}])
    message = str(info.value)
    assert "focall" in message
    for name in LOSSES:
        assert name in message


def test_build_loss_unknown_option_names_key_and_loss():
    with pytest.raises(ConfigError) as info:
        build_loss([{"name": "dice"}, {"name": "ce", "class_weight": [1.0, 2.0]}])
    message = str(info.value)
    assert "'class_weight'" in message and "'ce'" in message


@pytest.mark.parametrize(
    "specs", [[], {"name": "ce"}, [{"weight": 1.0}], [{"name": "ce", "weight": "1"}]]
)
def test_build_loss_rejects_malformed_specs(specs):
    with pytest.raises(ConfigError):
        build_loss(specs)
