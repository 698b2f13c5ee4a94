"""Adversarial loss (Luc et al. 2016): the two BCE terms, ignore handling, gradient routing."""

import pytest
import torch

from pixelwise.errors import ConfigError
from pixelwise.losses import AdversarialLoss, LabelMapDiscriminator
from pixelwise.losses.adversarial import one_hot_labels


def _bce(logit, label):
    p = torch.sigmoid(logit)
    return -(label * torch.log(p) + (1 - label) * torch.log(1 - p)).mean()


@pytest.mark.parametrize("encoding", ["basic", "product"])
def test_discriminator_scores_one_logit_per_image(encoding):
    d = LabelMapDiscriminator(4, width=8, encoding=encoding)
    out = d(torch.randn(3, 3, 19, 23), torch.rand(3, 4, 19, 23))
    assert out.shape == (3,)
    with pytest.raises(ConfigError, match="encoding 'mix'"):
        LabelMapDiscriminator(4, encoding="mix")


def test_one_hot_zeroes_ignored_pixels():
    target = torch.tensor([[[0, 2], [255, 1]]])
    oh = one_hot_labels(target, 3, 255)
    assert oh.shape == (1, 3, 2, 2)
    assert oh[0, :, 1, 0].sum() == 0 and oh[0, 2, 0, 1] == 1 and oh.sum() == 3


def test_losses_equal_the_bce_formulas_and_route_gradients():
    torch.manual_seed(0)
    d = LabelMapDiscriminator(3, width=8)
    adv = AdversarialLoss(d, num_classes=3, weight=0.5)
    image = torch.randn(2, 3, 16, 16)
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    target = torch.randint(0, 3, (2, 16, 16))
    target[:, :4] = 255
    probs = logits.softmax(1) * (target != 255)[:, None]
    real = d(image, one_hot_labels(target, 3))
    fake = d(image, probs)
    g = adv.generator_loss(image, logits, target)
    assert torch.allclose(g, 0.5 * _bce(fake, torch.ones_like(fake)), atol=1e-6)
    dl = adv.discriminator_loss(image, logits, target)
    assert torch.allclose(dl, _bce(real, torch.ones(2)) + _bce(fake, torch.zeros(2)), atol=1e-6)
    # The discriminator term must not push gradients into the segmenter...
    dl.backward()
    assert logits.grad is None
    # ...the generator term must, except through ignored pixels.
    g.backward()
    assert logits.grad.abs().sum() > 0 and logits.grad[:, :, :4].abs().sum() == 0


def test_discriminator_learns_to_tell_one_hot_from_soft_maps():
    torch.manual_seed(0)
    d = LabelMapDiscriminator(3, width=8)
    adv = AdversarialLoss(d, num_classes=3)
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    image = torch.randn(4, 3, 16, 16)
    target = torch.randint(0, 3, (4, 16, 16))
    logits = torch.randn(4, 3, 16, 16)
    first = adv.discriminator_loss(image, logits, target).item()
    for _ in range(30):
        opt.zero_grad()
        loss = adv.discriminator_loss(image, logits, target)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
