"""The shared loss options (losses/options.py), the region core (losses/region.py) and the
one signature every registered loss has."""

import inspect
import re

import numpy as np
import pytest
import torch

from pixelwise.errors import ConfigError
from pixelwise.losses import DiceLoss, JaccardLoss, TverskyLoss
from pixelwise.losses.options import LossOptions
from pixelwise.losses.region import region_index, region_inputs, soft_counts
from pixelwise.registry import LOSSES


@pytest.mark.parametrize(
    "options, words",
    [
        ({"mode": "multi"}, ["'multi'", "binary, multiclass, multilabel"]),
        ({"reduction": "avg"}, ["'avg'", "mean, sum, none"]),
        ({"ignore_index": 2.5}, ["ignore_index", "2.5", "int or None"]),
        ({"classes": []}, ["classes", r"\[\]", "use None for all classes"]),
        ({"classes": [1, -2]}, ["classes", "-2", ">= 0"]),
        ({"classes": [True]}, ["classes", "True"]),
        ({"classes": "all"}, ["classes", "'all'"]),
        ({"mode": "binary", "classes": [1]}, ["single class 0", r"\[1\]", "classes=None"]),
        ({"mode": "binary", "class_weights": [1.0]},
         ["class_weights is for mode='multiclass' or 'multilabel'", "'binary'", "drop class_weights"]),
        ({"class_weights": [1.0, -1.0]}, ["class_weights", "-1.0", ">= 0"]),
        ({"class_weights": []}, ["class_weights", "non-empty"]),
        ({"class_weights": [1.0, float("nan")]}, ["class_weights", "nan"]),
        ({"smooth": -1.0}, ["smooth", "-1.0", ">= 0"]),
        ({"eps": 0.0}, ["eps", "0.0", "> 0", "eps=1e-7"]),
    ],
)
def test_bad_options_fail_naming_the_loss_the_value_and_the_fix(options, words):
    with pytest.raises(ConfigError) as caught:
        LossOptions("SomeLoss", **options)
    message = str(caught.value)
    assert message.startswith("SomeLoss: ")
    for word in words:
        assert re.search(word, message), (word, message)


def test_a_loss_that_takes_weights_in_one_mode_offers_its_own_fix():
    with pytest.raises(ConfigError, match="mode='multiclass' but mode is 'multilabel'; use pos_weight"):
        LossOptions("CE", mode="multilabel", class_weights=[1.0], weights_for=("multiclass",),
                    weights_hint="use pos_weight")


def test_class_choices_allow_names_and_list_them_when_wrong():
    assert LossOptions("L", classes="present", class_choices=("present", "all")).classes == "present"
    with pytest.raises(ConfigError, match="'most' is not one of present, all or a list"):
        LossOptions("L", classes="most", class_choices=("present", "all"))


def test_options_are_normalised_and_frozen():
    options = LossOptions("L", classes=[np.int64(2), 0], class_weights=[1, 2, 3], smooth=1, eps=1)
    assert options.classes == (2, 0) and type(options.classes[0]) is int
    assert options.class_weights == (1.0, 2.0, 3.0) and options.smooth == 1.0
    with pytest.raises(AttributeError):
        options.mode = "binary"


def test_forward_checks_name_the_class_count():
    with pytest.raises(ValueError, match=r"classes \[0, 3\] includes 3 but the logits have 3 classes"):
        LossOptions("L", classes=[0, 3]).check_num_classes(3)
    with pytest.raises(ValueError, match="class_weights has 2 entries but the logits have 3 classes"):
        LossOptions("L", class_weights=[1, 1]).check_num_classes(3)
    with pytest.raises(ValueError, match="0 on every chosen class"):
        LossOptions("L", classes=[1], class_weights=[1, 0]).class_mean(torch.ones(2))


def test_class_mean_is_the_weighted_mean_of_the_chosen_classes():
    values = torch.tensor([[0.1, 0.5, 0.9], [0.3, 0.2, 0.7]], dtype=torch.float64)
    weights = np.array([2.0, 1.0, 4.0])
    chosen = np.array([0.0, 1.0, 1.0]) * weights
    expected = np.mean((values.numpy() * chosen).sum(-1) / chosen.sum())
    got = LossOptions("L", classes=[1, 2], class_weights=list(weights)).class_mean(values)
    assert float(got) == pytest.approx(expected)


def test_reduce_divides_by_the_weight_and_stays_zero_in_the_graph_when_nothing_counts():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    weight = torch.tensor([0.5, 0.0, 1.5])
    assert float(LossOptions("L", reduction="mean").reduce(x.detach() * weight, weight)) == pytest.approx(5.0 / 2.0)
    assert float(LossOptions("L", reduction="sum").reduce(x.detach() * weight, weight)) == pytest.approx(5.0)
    nothing = LossOptions("L", reduction="mean").reduce(x * 0, torch.zeros(3))
    nothing.backward()
    assert nothing.item() == 0.0 and torch.isfinite(x.grad).all()


def test_region_core_matches_the_numpy_formulas():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 7, 9))
    target[0, :2] = 255
    options = LossOptions("L", smooth=0.5, eps=1e-7)
    probs, truth, _ = region_inputs(logits, target, options, from_logits=True)
    p = torch.softmax(logits, 1).numpy()
    valid = (target != 255).numpy()[:, None]
    g = np.stack([(target.numpy() == c) for c in range(3)], 1) * valid
    p = p * valid
    tp = (p * g).sum((0, 2, 3))
    fp = (p * (1 - g)).sum((0, 2, 3))
    fn = ((1 - p) * g).sum((0, 2, 3))
    counts = soft_counts(probs, truth, per_image=False)
    for got, want in zip(counts, (tp, fp, fn)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    dice = region_index(*counts, smooth=0.5, eps=1e-7, tp_weight=2.0).numpy()
    np.testing.assert_allclose(dice, (2 * tp + 0.5) / (p.sum((0, 2, 3)) + g.sum((0, 2, 3)) + 0.5), rtol=1e-10)
    tversky = region_index(*counts, smooth=0.5, eps=1e-7, alpha=0.3, beta=0.7).numpy()
    np.testing.assert_allclose(tversky, (tp + 0.5) / (tp + 0.3 * fp + 0.7 * fn + 0.5), rtol=1e-10)
    squared = soft_counts(probs, truth, per_image=True, squared=True)
    size = 2 * squared[0] + squared[1] + squared[2]
    np.testing.assert_allclose(size.numpy(), (p**2).sum((2, 3)) + (g**2).sum((2, 3)), rtol=1e-10)
    # The losses are that core: Dice, IoU and Tversky(0.5, 0.5) with halved smooth agree.
    iou = 1 - np.mean((tp + 0.5) / (tp + fp + fn + 0.5))
    assert float(JaccardLoss(smooth=0.5)(logits, target)) == pytest.approx(iou)
    assert float(DiceLoss(smooth=1.0)(logits, target)) == pytest.approx(
        float(TverskyLoss(alpha=0.5, beta=0.5, smooth=0.5)(logits, target)))


def test_dice_takes_class_weights_like_the_other_region_losses():
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    one = [DiceLoss(classes=[c], smooth=1.0)(logits, target) for c in range(3)]
    weighted = DiceLoss(class_weights=[1.0, 0.0, 3.0])(logits, target)
    assert float(weighted) == pytest.approx(float((one[0] + 3 * one[2]) / 4), rel=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_has_the_one_signature_and_checked_options(name):
    constructor = LOSSES[name]
    parameters = list(inspect.signature(constructor).parameters.values())
    assert parameters[0].name == "mode" and parameters[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert parameters[0].default == "multiclass"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters[1:]), name
    assert parameters[1].name == "ignore_index" and parameters[1].default == 255
    loss = constructor("binary", ignore_index=3)
    assert isinstance(loss.options, LossOptions) and loss.options.owner == constructor.__name__
    assert (loss.mode, loss.ignore_index) == ("binary", 3)
    assert "mode='binary'" in repr(loss)
    with pytest.raises(ConfigError, match=f"^{constructor.__name__}: mode 'binar'"):
        constructor("binar")
