"""The extra losses against independent references written out here (NumPy formulas,
brute-force distances, the Choquet-integral form of the Lovász extension), known
identities, gradchecks and the edge cases every loss must survive."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pixelwise.errors import ConfigError, DataError
from pixelwise.losses import (
    BoundaryLoss,
    CrossEntropyLoss,
    DiceLoss,
    DistanceWeightedCrossEntropyLoss,
    FocalLoss,
    FocalTverskyLoss,
    HausdorffDTLoss,
    JaccardLoss,
    LovaszLoss,
    OhemCrossEntropyLoss,
    SensitivitySpecificityLoss,
    TopKCrossEntropyLoss,
    TverskyLoss,
    build_loss,
)
from pixelwise.losses.boundary import signed_distance
from pixelwise.losses.lovasz import lovasz_extension
from pixelwise.registry import LOSSES

IGNORE = 255
NEW_LOSSES = [
    "focal", "iou", "tversky", "focal_tversky", "lovasz", "topk", "ohem",
    "boundary", "hausdorff", "distance_ce", "sens_spec",
]
MODES = ["multiclass", "binary", "multilabel"]


# ---------------------------------------------------------------- inputs and references


def _multiclass(shape=(2, 3, 5, 6), seed=0, ignore_fraction=0.2, scale=1.0):
    generator = torch.Generator().manual_seed(seed)
    logits = scale * torch.randn(shape, generator=generator, dtype=torch.float64)
    target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=generator)
    ignored = torch.rand(target.shape, generator=generator) < ignore_fraction
    target[ignored] = IGNORE
    assert ignored.any() and not ignored.all()
    return logits, target


def _binary(shape=(2, 5, 6), seed=1, ignore_fraction=0.2):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn((shape[0], 1, *shape[1:]), generator=generator, dtype=torch.float64)
    target = torch.randint(0, 2, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < ignore_fraction] = IGNORE
    return logits, target


def _multilabel(shape=(2, 3, 5, 6), seed=2, ignore_fraction=0.2):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=generator, dtype=torch.float64)
    target = torch.randint(0, 2, shape, generator=generator).double()
    target[torch.rand(shape, generator=generator) < ignore_fraction] = IGNORE
    return logits, target


def _inputs(mode, **kwargs):
    return {"multiclass": _multiclass, "binary": _binary, "multilabel": _multilabel}[mode](
        **kwargs
    )


def _np_softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_log_softmax(x, axis=1):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _np_bce(x, t):
    return t * np.log1p(np.exp(-x)) + (1 - t) * np.log1p(np.exp(x))


def _np_region(mode, logits, target):
    """probs, truth, valid as (N, K, *S) float arrays, ignored elements zero in all."""
    x, t = logits.numpy(), target.numpy()
    if mode == "multiclass":
        valid = (t != IGNORE)[:, None].astype(float)
        probs = _np_softmax(x)
        truth = (np.where(t == IGNORE, -1, t)[:, None] == np.arange(x.shape[1]).reshape(
            1, -1, *([1] * (x.ndim - 2)))).astype(float)
    else:
        if mode == "binary":
            x, t = x[:, 0][:, None], t[:, None]
        valid = (t != IGNORE).astype(float)
        probs = _np_sigmoid(x)
        truth = np.where(t == IGNORE, 0.0, t)
    return probs * valid, truth * valid, valid


def _brute_inside(mask, spacing=None):
    """For each True element, distance to the nearest False element (pairwise search)."""
    spacing = np.ones(mask.ndim) if spacing is None else np.asarray(spacing, dtype=float)
    coords = np.indices(mask.shape).reshape(mask.ndim, -1).T * spacing
    flat = mask.reshape(-1)
    out = np.zeros(flat.shape)
    outside = coords[~flat]
    for i in np.flatnonzero(flat):
        out[i] = np.sqrt(((outside - coords[i]) ** 2).sum(1)).min() if len(outside) else np.inf
    return out.reshape(mask.shape)


def _brute_signed(mask, spacing=None):
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    return _brute_inside(~mask, spacing) - _brute_inside(mask, spacing)


def _choquet_jaccard(errors, members):
    """Lovász extension of |M| / |G ∪ M| by its integral definition over level sets:
    f(m) = integral_0^inf F({i : m_i >= t}) dt, written as a sum over distinct levels."""
    levels = sorted(set(errors[errors > 0].tolist()), reverse=True)
    total = 0.0
    for j, level in enumerate(levels):
        below = levels[j + 1] if j + 1 < len(levels) else 0.0
        mispredicted = errors >= level
        total += (level - below) * mispredicted.sum() / (members | mispredicted).sum()
    return total


def _gradcheck(module, logits, target):
    logits = logits.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: module(x, target), (logits,), atol=1e-6)


# ---------------------------------------------------------------- focal


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_multiclass_matches_numpy(reduction):
    logits, target = _multiclass()
    alpha, gamma = [0.25, 1.0, 2.0], 2.0
    t = target.numpy()
    valid = t != IGNORE
    t0 = np.where(valid, t, 0)
    log_p = np.take_along_axis(_np_log_softmax(logits.numpy()), t0[:, None], axis=1)[:, 0]
    per_pixel = -np.asarray(alpha)[t0] * (1 - np.exp(log_p)) ** gamma * log_p * valid
    expected = {"mean": per_pixel.sum() / valid.sum(), "sum": per_pixel.sum(),
                "none": per_pixel}[reduction]
    value = FocalLoss(alpha=alpha, gamma=gamma, reduction=reduction)(logits, target)
    np.testing.assert_allclose(value.numpy(), expected, rtol=1e-10)


def test_focal_binary_and_multilabel_match_numpy():
    logits, target = _binary()
    x, t = logits[:, 0].numpy(), target.numpy().astype(float)
    valid = t != IGNORE
    t0 = np.where(valid, t, 0)
    p = _np_sigmoid(x)
    p_t = np.where(t0 == 1, p, 1 - p)
    alpha_t = np.where(t0 == 1, 0.25, 0.75)
    expected = (-alpha_t * (1 - p_t) ** 1.5 * np.log(p_t) * valid).sum() / valid.sum()
    value = FocalLoss(mode="binary", alpha=0.25, gamma=1.5)(logits, target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)

    logits, target = _multilabel()
    x, t = logits.numpy(), target.numpy()
    valid = t != IGNORE
    t0 = np.where(valid, t, 0)
    p = _np_sigmoid(x)
    p_t = np.where(t0 == 1, p, 1 - p)
    a = np.array([0.1, 0.5, 0.9]).reshape(1, 3, 1, 1)
    alpha_t = np.where(t0 == 1, a, 1 - a)
    expected = (-alpha_t * (1 - p_t) ** 2 * np.log(p_t) * valid).sum() / valid.sum()
    value = FocalLoss(mode="multilabel", alpha=[0.1, 0.5, 0.9])(logits, target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_focal_with_gamma_0_is_cross_entropy(mode):
    logits, target = _inputs(mode)
    focal = FocalLoss(mode=mode, gamma=0.0, alpha=None)(logits, target)
    ce = CrossEntropyLoss(mode=mode)(logits, target)
    np.testing.assert_allclose(focal.item(), ce.item(), rtol=1e-12)
    if mode == "multiclass":
        weights = [0.5, 2.0, 3.0]
        focal = FocalLoss(gamma=0.0, alpha=weights, reduction="sum")(logits, target)
        ce = CrossEntropyLoss(class_weights=weights, reduction="sum")(logits, target)
        np.testing.assert_allclose(focal.item(), ce.item(), rtol=1e-12)


def test_focal_gradcheck():
    _gradcheck(FocalLoss(alpha=[0.3, 1.0, 2.0], gamma=2.0), *_multiclass((1, 3, 3, 4)))
    _gradcheck(FocalLoss(mode="binary", alpha=0.25, gamma=0.5), *_binary((1, 3, 4)))


@pytest.mark.parametrize("mode", MODES)
def test_focal_with_gamma_below_1_has_finite_gradients_on_perfect_pixels(mode):
    # d/dx x**0.5 is infinite at x = 1 - p_t = 0, which must not leak as NaN.
    logits, target = _inputs(mode)
    if mode == "multiclass":
        perfect = torch.nn.functional.one_hot(target.clamp_max(2), 3).movedim(-1, 1)
    else:
        perfect = target.clamp_max(1).view(logits.shape)
    logits = ((perfect.double() * 2 - 1) * 1e3).requires_grad_(True)
    loss = FocalLoss(mode=mode, gamma=0.5)(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_focal_rejects_bad_alpha_and_gamma():
    with pytest.raises(ConfigError, match="one weight per class"):
        FocalLoss(alpha=0.25)
    with pytest.raises(ConfigError, match="scalar alpha"):
        FocalLoss(mode="binary", alpha=[0.2, 0.8])
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        FocalLoss(mode="binary", alpha=1.5)
    with pytest.raises(ConfigError, match="gamma"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match="alpha has 2 entries but the logits have 3"):
        FocalLoss(alpha=[1.0, 2.0])(*_multiclass())


# ---------------------------------------------------------------- soft IoU


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_image", [False, True])
def test_iou_matches_numpy(mode, per_image):
    logits, target = _inputs(mode)
    p, g, _ = _np_region(mode, logits, target)
    axes = (2, 3) if per_image else (0, 2, 3)
    inter = (p * g).sum(axes)
    union = p.sum(axes) + g.sum(axes) - inter
    iou = (inter + 0.5) / (union + 0.5)
    expected = 1 - iou.mean()
    value = JaccardLoss(mode=mode, smooth=0.5, per_image=per_image)(logits, target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)
    if mode != "binary":
        w = np.array([0.0, 1.0, 3.0])
        expected = 1 - ((iou * w).sum(-1) / w.sum()).mean()
        loss = JaccardLoss(mode=mode, smooth=0.5, per_image=per_image, class_weights=list(w))
        np.testing.assert_allclose(loss(logits, target).item(), expected, rtol=1e-10)
        expected = 1 - iou[..., [0, 2]].mean()
        loss = JaccardLoss(mode=mode, smooth=0.5, per_image=per_image, classes=[0, 2])
        np.testing.assert_allclose(loss(logits, target).item(), expected, rtol=1e-10)


def test_iou_on_hard_probabilities_is_one_minus_miou_from_counts():
    logits, target = _multiclass((2, 4, 6, 7))
    predicted = logits.argmax(1)
    one_hot = torch.nn.functional.one_hot(predicted, 4).movedim(-1, 1).double()
    t, pr = target.numpy(), predicted.numpy()
    valid = t != IGNORE
    ious = []
    for c in range(4):
        both = ((pr == c) & (t == c) & valid).sum()
        either = (((pr == c) | (t == c)) & valid).sum()
        ious.append(both / either)
    value = JaccardLoss(smooth=0.0, from_logits=False)(one_hot, target)
    np.testing.assert_allclose(value.item(), 1 - np.mean(ious), rtol=1e-12)


def test_iou_gradcheck():
    _gradcheck(JaccardLoss(smooth=0.1), *_multiclass((1, 3, 3, 4)))
    _gradcheck(JaccardLoss(mode="binary", per_image=True), *_binary((2, 3, 4)))


# ---------------------------------------------------------------- Tversky


@pytest.mark.parametrize("mode", MODES)
def test_tversky_and_focal_tversky_match_numpy(mode):
    logits, target = _inputs(mode)
    p, g, valid = _np_region(mode, logits, target)
    axes = (0, 2, 3)
    tp = (p * g).sum(axes)
    fp = (p * (1 - g) * valid).sum(axes)
    fn = ((1 - p) * g * valid).sum(axes)
    ti = (tp + 1.0) / (tp + 0.2 * fp + 0.8 * fn + 1.0)
    value = TverskyLoss(mode=mode, alpha=0.2, beta=0.8)(logits, target)
    np.testing.assert_allclose(value.item(), 1 - ti.mean(), rtol=1e-10)
    value = FocalTverskyLoss(mode=mode, alpha=0.2, beta=0.8, gamma=2.0)(logits, target)
    np.testing.assert_allclose(value.item(), ((1 - ti) ** 0.5).mean(), rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_image", [False, True])
def test_tversky_identities_dice_iou_and_gamma_1(mode, per_image):
    logits, target = _inputs(mode)
    # alpha = beta = 1/2: TI = (TP + s) / ((sum P + sum G) / 2 + s) = Dice with 2s.
    for smooth in (0.0, 1.0):
        tversky = TverskyLoss(mode=mode, alpha=0.5, beta=0.5, smooth=smooth / 2,
                              per_image=per_image)
        dice = DiceLoss(mode=mode, smooth=smooth, per_image=per_image)
        np.testing.assert_allclose(
            tversky(logits, target).item(), dice(logits, target).item(), rtol=1e-12
        )
    tversky = TverskyLoss(mode=mode, alpha=1.0, beta=1.0, per_image=per_image)
    iou = JaccardLoss(mode=mode, per_image=per_image)
    np.testing.assert_allclose(tversky(logits, target).item(), iou(logits, target).item(),
                               rtol=1e-12)
    focal = FocalTverskyLoss(mode=mode, gamma=1.0, per_image=per_image)
    plain = TverskyLoss(mode=mode, per_image=per_image)
    np.testing.assert_allclose(focal(logits, target).item(), plain(logits, target).item(),
                               rtol=1e-12)


def test_tversky_gradcheck():
    _gradcheck(TverskyLoss(), *_multiclass((1, 3, 3, 4)))
    _gradcheck(FocalTverskyLoss(mode="multilabel"), *_multilabel((1, 2, 3, 4)))


def test_tversky_rejects_bad_weights():
    with pytest.raises(ConfigError, match="alpha"):
        TverskyLoss(alpha=-0.1)
    with pytest.raises(ConfigError, match="gamma"):
        FocalTverskyLoss(gamma=0.0)
    with pytest.raises(ConfigError, match="single class 0"):
        TverskyLoss(mode="binary", classes=[1])
    with pytest.raises(ValueError, match="class_weights has 2 entries but the logits have 3"):
        TverskyLoss(class_weights=[1.0, 2.0])(*_multiclass())


# ---------------------------------------------------------------- Lovász


def test_lovasz_extension_worked_example():
    # Errors 0.5, 0.2, 0.0 on elements with membership 1, 0, 1 (|G| = 2).
    # D(S_1) = 1/2, D(S_2) = 2/3, D(S_3) = 3/3, so the weights are 1/2, 1/6, 1/3
    # and the loss 0.5 * 1/2 + 0.2 * 1/6 + 0 * 1/3 = 17/60.
    errors = torch.tensor([[[0.2, 0.0, 0.5]]], dtype=torch.float64)
    truth = torch.tensor([[[0.0, 1.0, 1.0]]], dtype=torch.float64)
    np.testing.assert_allclose(lovasz_extension(errors, truth).item(), 17 / 60, rtol=1e-12)


def _lovasz_softmax_reference(probs, target, classes, per_image):
    t = target.numpy()
    p = probs.numpy()
    groups = [[n] for n in range(t.shape[0])] if per_image else [list(range(t.shape[0]))]
    results = []
    for group in groups:
        labels = t[group].reshape(-1)
        prob = np.moveaxis(p[group], 1, -1).reshape(-1, p.shape[1])
        keep = labels != IGNORE
        labels, prob = labels[keep], prob[keep]
        losses = []
        for c in range(p.shape[1]):
            members = labels == c
            if classes == "present" and not members.any():
                continue
            if isinstance(classes, list) and c not in classes:
                continue
            if len(labels) == 0:
                continue
            losses.append(_choquet_jaccard(np.abs(members - prob[:, c]), members))
        if losses:
            results.append(np.mean(losses))
    return np.mean(results) if results else 0.0


@pytest.mark.parametrize("classes", ["present", "all", [0, 2]])
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_softmax_matches_choquet_integral(classes, per_image):
    logits, target = _multiclass((3, 4, 4, 5))
    target[0][target[0] == 3] = 1  # class 3 absent from image 0
    target[2] = IGNORE  # image 2 entirely ignored
    expected = _lovasz_softmax_reference(logits.softmax(1), target, classes, per_image)
    value = LovaszLoss(classes=classes, per_image=per_image)(logits, target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_softmax_on_one_hot_probabilities_is_one_minus_iou(per_image):
    logits, target = _multiclass((2, 4, 6, 7))
    predicted = logits.argmax(1)
    one_hot = torch.nn.functional.one_hot(predicted, 4).movedim(-1, 1).double()
    t, pr = target.numpy(), predicted.numpy()
    images = [[0], [1]] if per_image else [[0, 1]]
    per_group = []
    for group in images:
        valid = t[group] != IGNORE
        ious = []
        for c in range(4):
            if not ((t[group] == c) & valid).any():
                continue  # classes="present"
            both = ((pr[group] == c) & (t[group] == c) & valid).sum()
            either = (((pr[group] == c) | (t[group] == c)) & valid).sum()
            ious.append(both / either)
        per_group.append(1 - np.mean(ious))
    value = LovaszLoss(from_logits=False, per_image=per_image)(one_hot, target)
    np.testing.assert_allclose(value.item(), np.mean(per_group), rtol=1e-12)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_hinge_matches_choquet_integral(mode, per_image):
    logits, target = _inputs(mode)
    x, t = logits.numpy(), target.numpy().astype(float)
    if mode == "binary":
        x, t = x[:, 0][:, None], t[:, None]
    groups = [[n] for n in range(x.shape[0])] if per_image else [list(range(x.shape[0]))]
    per_group = []
    for group in groups:
        losses = []
        for k in range(x.shape[1]):
            labels = t[group][:, k].reshape(-1)
            scores = x[group][:, k].reshape(-1)
            keep = labels != IGNORE
            labels, scores = labels[keep], scores[keep]
            members = labels == 1
            if not members.any():  # classes="present"
                continue
            hinge = np.maximum(0.0, 1.0 - scores * (2 * labels - 1))
            losses.append(_choquet_jaccard(hinge, members))
        if losses:
            per_group.append(np.mean(losses))
    value = LovaszLoss(mode=mode, per_image=per_image)(logits, target)
    np.testing.assert_allclose(value.item(), np.mean(per_group), rtol=1e-10)


def test_lovasz_hinge_is_zero_for_a_perfect_prediction_with_margin():
    generator = torch.Generator().manual_seed(3)
    target = torch.randint(0, 2, (2, 5, 6), generator=generator)
    margin = 1.0 + torch.rand(target.shape, generator=generator, dtype=torch.float64)
    logits = (torch.where(target == 1, margin, -margin)).unsqueeze(1).requires_grad_(True)
    loss = LovaszLoss(mode="binary", classes="all")(logits, target)
    assert loss.item() == 0.0
    # ... and not for a margin below 1 on one pixel.
    worse = logits.detach().clone()
    worse[0, 0, 0, 0] = 0.5 * torch.sign(worse[0, 0, 0, 0])
    assert LovaszLoss(mode="binary", classes="all")(worse, target).item() > 0


def test_lovasz_gradcheck():
    _gradcheck(LovaszLoss(), *_multiclass((1, 3, 3, 4)))
    _gradcheck(LovaszLoss(mode="binary", per_image=True), *_binary((2, 3, 4)))


def test_lovasz_rejects_bad_options_and_soft_hinge_targets():
    with pytest.raises(ConfigError, match="present, all"):
        LovaszLoss(classes="some")
    with pytest.raises(ConfigError, match="from_logits=False is only valid"):
        LovaszLoss(mode="binary", from_logits=False)
    logits, target = _binary()
    soft = target.double()
    soft[0, 0, 0] = 0.3
    with pytest.raises(DataError, match="0/1 targets but got 0.3"):
        LovaszLoss(mode="binary")(logits, soft)


# ---------------------------------------------------------------- top-k and OHEM


def _np_ce_per_pixel(logits, target):
    t = target.numpy()
    valid = t != IGNORE
    log_p = np.take_along_axis(
        _np_log_softmax(logits.numpy()), np.where(valid, t, 0)[:, None], axis=1
    )[:, 0]
    return -log_p, valid


@pytest.mark.parametrize("percent", [10.0, 37.0, 100.0])
def test_topk_matches_numpy_and_only_the_top_pixels_get_gradient(percent):
    logits, target = _multiclass((2, 3, 6, 7))
    ce, valid = _np_ce_per_pixel(logits, target)
    values = np.sort(ce[valid])[::-1]
    k = max(1, math.ceil(percent / 100 * valid.sum()))
    logits.requires_grad_(True)
    loss = TopKCrossEntropyLoss(percent=percent)(logits, target)
    np.testing.assert_allclose(loss.item(), values[:k].mean(), rtol=1e-10)
    loss.backward()
    touched = logits.grad.abs().sum(1).numpy() > 0
    chosen = valid & (ce >= values[k - 1])
    np.testing.assert_array_equal(touched, chosen)
    if percent == 100.0:
        np.testing.assert_allclose(
            loss.item(), CrossEntropyLoss()(logits, target).item(), rtol=1e-12
        )


def test_ohem_keeps_pixels_below_threshold_or_the_min_kept_hardest():
    logits, target = _multiclass((2, 3, 6, 7), scale=2.0)
    ce, valid = _np_ce_per_pixel(logits, target)
    p_true = np.exp(-ce)
    # The threshold is one pixel's own probability: "below" must leave that pixel out.
    threshold = float(np.sort(p_true[valid])[20])
    hard = valid & (p_true < threshold)
    assert hard.sum() == 20
    # Enough hard pixels: the mean over exactly those.
    value = OhemCrossEntropyLoss(threshold=threshold, min_kept=3)(logits, target)
    np.testing.assert_allclose(value.item(), ce[hard].mean(), rtol=1e-10)
    # Too few: the min_kept lowest-probability pixels instead.
    min_kept = int(hard.sum()) + 7
    lowest = np.sort(p_true[valid])[:min_kept]
    expected = (-np.log(lowest)).mean()
    value = OhemCrossEntropyLoss(threshold=threshold, min_kept=min_kept)(logits, target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)
    # Weighted mean as F.cross_entropy weighs it.
    w = np.array([0.5, 1.0, 4.0])[np.where(valid, target.numpy(), 0)]
    value = OhemCrossEntropyLoss(threshold=threshold, min_kept=0, class_weights=[0.5, 1, 4])
    np.testing.assert_allclose(
        value(logits, target).item(), (w * ce)[hard].sum() / w[hard].sum(), rtol=1e-10
    )


def test_ohem_keeping_everything_is_cross_entropy():
    logits, target = _multiclass()
    ce = CrossEntropyLoss(class_weights=[1.0, 2.0, 3.0])(logits, target).item()
    for options in ({"min_kept": 10_000}, {"threshold": 1.5, "min_kept": 0}):
        loss = OhemCrossEntropyLoss(class_weights=[1.0, 2.0, 3.0], **options)
        np.testing.assert_allclose(loss(logits, target).item(), ce, rtol=1e-12)


def test_topk_and_ohem_reject_bad_options():
    with pytest.raises(ConfigError, match="percent"):
        TopKCrossEntropyLoss(percent=0.0)
    with pytest.raises(ConfigError, match="min_kept"):
        OhemCrossEntropyLoss(min_kept=-1)
    with pytest.raises(ConfigError, match="class_weights is for mode='multiclass'"):
        OhemCrossEntropyLoss(mode="binary", class_weights=[1.0])


# ---------------------------------------------------------------- distance-map losses


def test_signed_distance_matches_brute_force_2d_and_3d_with_spacing():
    generator = np.random.default_rng(0)
    masks = generator.random((3, 6, 7)) < 0.3
    masks[1] = False  # empty
    masks[2] = True  # full
    expected = np.stack([_brute_signed(m) for m in masks])
    np.testing.assert_allclose(signed_distance(masks), expected, rtol=1e-12)
    assert (signed_distance(masks)[0] != 0).all()
    volume = generator.random((2, 3, 4, 5)) < 0.4
    spacing = [2.5, 1.0, 0.5]
    expected = np.stack([_brute_signed(m, spacing) for m in volume])
    np.testing.assert_allclose(signed_distance(volume, spacing), expected, rtol=1e-12)


def _np_class_masks(mode, target, num_classes):
    t = target.numpy()
    if mode == "multiclass":
        valid = t != IGNORE
        return np.stack([(t == c) & valid for c in range(num_classes)], axis=1), valid[:, None]
    if mode == "binary":
        t = t[:, None]
    valid = t != IGNORE
    return (t >= 0.5) & valid, valid


@pytest.mark.parametrize("mode", MODES)
def test_boundary_loss_matches_brute_force(mode):
    logits, target = _inputs(mode)
    if mode == "multiclass":
        target[1][target[1] == 2] = 0  # class 2 absent from image 1: phi = 0 there
    x = logits.numpy()
    probs = _np_softmax(x) if mode == "multiclass" else _np_sigmoid(x)
    masks, valid = _np_class_masks(mode, target, probs.shape[1])
    phi = np.stack([np.stack([_brute_signed(m) for m in image]) for image in masks])
    weight = np.broadcast_to(valid, probs.shape)
    expected = (phi * probs * weight).sum() / weight.sum()
    value = BoundaryLoss(mode=mode)(logits, target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)
    if mode == "multiclass":
        chosen = weight * (np.arange(3) >= 1).reshape(1, 3, 1, 1)
        expected = (phi * probs * chosen).sum() / chosen.sum()
        value = BoundaryLoss(mode=mode, classes=[1, 2])(logits, target)
        np.testing.assert_allclose(value.item(), expected, rtol=1e-10)


@pytest.mark.parametrize("mode", MODES)
def test_hausdorff_loss_matches_brute_force(mode):
    logits, target = _inputs(mode)
    x = logits.numpy()
    if mode == "multiclass":
        probs = _np_softmax(x)
        predicted = np.stack([x.argmax(1) == c for c in range(x.shape[1])], axis=1)
    else:
        probs = _np_sigmoid(x[:, :1] if mode == "binary" else x)
        predicted = probs > 0.5
    masks, valid = _np_class_masks(mode, target, probs.shape[1])

    def unsigned(all_masks):
        return np.abs(np.stack([np.stack([_brute_signed(m) for m in im]) for im in all_masks]))

    weight = unsigned(masks) ** 2 + unsigned(predicted) ** 2
    valid = np.broadcast_to(valid, probs.shape)
    expected = ((probs - masks) ** 2 * weight * valid).sum() / valid.sum()
    value = HausdorffDTLoss(mode=mode)(logits, target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)
    value = HausdorffDTLoss(mode=mode, reduction="sum")(logits, target)
    np.testing.assert_allclose(value.item(), expected * valid.sum(), rtol=1e-10)


def test_boundary_loss_prefers_mass_inside_the_true_region():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    inside = torch.where(target == 1, 5.0, -5.0).unsqueeze(1).double()
    loss = BoundaryLoss(mode="binary")
    assert loss(inside, target) < loss(-inside, target)
    assert loss(inside, target) < 0


def test_distance_losses_reject_bad_spacing():
    with pytest.raises(ConfigError, match="spacing"):
        BoundaryLoss(spacing=[0.0, 1.0])
    with pytest.raises(ValueError, match="spacing"):
        HausdorffDTLoss(spacing=[1.0, 1.0, 1.0])(*_multiclass())


# ---------------------------------------------------------------- distance-weighted CE


def _brute_other_label_distance(labels):
    """labels (H, W) int with -1 for ignored: distance from each labelled pixel to the
    nearest pixel of another label or ignored; inf when there is none."""
    h, w = labels.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            if labels[i, j] < 0:
                continue
            best = np.inf
            for a in range(h):
                for b in range(w):
                    if labels[a, b] != labels[i, j]:
                        best = min(best, math.hypot(a - i, b - j))
            out[i, j] = best
    return out


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_distance_ce_matches_brute_force(mode):
    logits, target = _inputs(mode, ignore_fraction=0.1)
    t = target.numpy()
    valid = t != IGNORE
    labels = np.where(valid, t, -1)
    if mode == "multiclass":
        labels[1] = np.where(valid[1], 2, -1)  # image 1: one label and ignored pixels
        target[1][torch.from_numpy(valid[1])] = 2
        ce, _ = _np_ce_per_pixel(logits, target)
    else:
        ce = _np_bce(logits.numpy()[:, 0], np.where(valid, t, 0))
    d = np.stack([_brute_other_label_distance(im) for im in labels])
    w = (1 + 4.0 * np.exp(-d / 2.0)) * valid
    value = DistanceWeightedCrossEntropyLoss(mode=mode, boundary_weight=4.0, sigma=2.0)
    np.testing.assert_allclose(
        value(logits, target).item(), (w * ce).sum() / w.sum(), rtol=1e-10
    )
    plain = DistanceWeightedCrossEntropyLoss(mode=mode, boundary_weight=0.0)
    np.testing.assert_allclose(
        plain(logits, target).item(), CrossEntropyLoss(mode=mode)(logits, target).item(),
        rtol=1e-12,
    )


def test_distance_ce_single_label_image_has_unit_weights():
    logits = torch.randn(1, 3, 5, 6, dtype=torch.float64)
    target = torch.full((1, 5, 6), 1)
    loss = DistanceWeightedCrossEntropyLoss(reduction="none")(logits, target)
    expected = CrossEntropyLoss(reduction="none")(logits, target)
    np.testing.assert_allclose(loss.numpy(), expected.numpy(), rtol=1e-12)


# ---------------------------------------------------------------- sensitivity-specificity


@pytest.mark.parametrize("mode", MODES)
def test_sens_spec_matches_numpy(mode):
    logits, target = _inputs(mode)
    p, g, valid = _np_region(mode, logits, target)
    axes = (0, 2, 3)
    sq = (g - p) ** 2
    sens = (sq * g).sum(axes) / g.sum(axes)
    spec = (sq * (1 - g) * valid).sum(axes) / ((1 - g) * valid).sum(axes)
    expected = (0.3 * sens + 0.7 * spec).mean()
    value = SensitivitySpecificityLoss(mode=mode, r=0.3)(logits, target)
    np.testing.assert_allclose(value.item(), expected, rtol=1e-10)


def test_sens_spec_r_weighs_the_positives():
    # Foreground fully missed, background perfect: only the sensitivity term is non-zero.
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1
    probs = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    loss = SensitivitySpecificityLoss(mode="binary", r=0.25, from_logits=False)
    np.testing.assert_allclose(loss(probs, target).item(), 0.25, rtol=1e-12)


# ---------------------------------------------------------------- every new loss, edge cases


def _build(name, mode):
    return build_loss([{"name": name}], ignore_index=IGNORE, mode=mode)


def _value_and_grad(loss, logits, target):
    logits = logits.detach().clone().requires_grad_(True)
    value = loss(logits, target)
    value.backward()
    return value, logits.grad


def test_all_new_losses_are_registered():
    assert set(NEW_LOSSES) <= set(LOSSES)


@pytest.mark.parametrize("name", NEW_LOSSES)
@pytest.mark.parametrize("mode", MODES)
def test_all_ignored_gives_finite_value_and_zero_gradient(name, mode):
    logits, target = _inputs(mode)
    target = torch.full_like(target, IGNORE)
    value, grad = _value_and_grad(_build(name, mode), logits, target)
    assert torch.isfinite(value)
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("name", NEW_LOSSES)
@pytest.mark.parametrize("mode", MODES)
def test_ignored_pixels_get_no_gradient(name, mode):
    logits, target = _inputs(mode)
    value, grad = _value_and_grad(_build(name, mode), logits, target)
    assert torch.isfinite(value) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    ignored = target == IGNORE
    if mode == "multiclass":
        ignored = ignored.unsqueeze(1).expand_as(grad)
    elif mode == "binary":
        ignored = ignored.unsqueeze(1)
    assert grad[ignored].abs().sum() == 0


@pytest.mark.parametrize("name", NEW_LOSSES)
@pytest.mark.parametrize("case", ["absent_class", "single_class", "empty_binary_foreground"])
def test_absent_and_single_classes_are_finite(name, case):
    if case == "empty_binary_foreground":
        mode = "binary"
        logits, target = _binary()
        target[target == 1] = 0
    else:
        mode = "multiclass"
        logits, target = _multiclass()
        target[target == 2] = 0 if case == "absent_class" else 2
        if case == "single_class":
            target[target != IGNORE] = 1
    value, grad = _value_and_grad(_build(name, mode), logits, target)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", NEW_LOSSES)
@pytest.mark.parametrize("mode", MODES)
def test_extreme_logits_stay_finite(name, mode):
    logits, target = _inputs(mode)
    logits = (torch.sign(logits) * 1e4).float()
    value, grad = _value_and_grad(_build(name, mode), logits, target)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    # Perfect extreme predictions too (p exactly 0 or 1 in float32).
    if mode == "multiclass":
        perfect = torch.nn.functional.one_hot(target.clamp_max(2), 3).movedim(-1, 1)
    else:
        perfect = target.clamp_max(1).view(logits.shape)
    value, grad = _value_and_grad(_build(name, mode), (perfect.float() * 2 - 1) * 1e4, target)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_shape_mismatch_names_both_shapes(name):
    logits = torch.randn(2, 3, 5, 6)
    target = torch.zeros(2, 5, 7, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(2, 3, 5, 6\).*\(2, 5, 7\)"):
        _build(name, "multiclass")(logits, target)


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_unknown_mode_lists_the_valid_modes(name):
    with pytest.raises(ConfigError, match="binary, multiclass, multilabel"):
        LOSSES[name](mode="multi-class")
