"""Registries: duplicates refused, unknown names listed, every registered loss usable."""

import pytest
import torch

from pixelwise.losses import build_loss
from pixelwise.registry import LOSSES, lookup, register


def test_register_refuses_duplicates_and_lookup_lists_names():
    table = {}
    register(table, "a")(int)
    with pytest.raises(KeyError, match="already registered"):
        register(table, "a")(float)
    with pytest.raises(KeyError, match="unknown thing 'b'; valid names: a"):
        lookup(table, "b", "thing")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_gives_a_finite_scalar_and_gradients(name):
    logits = torch.randn(2, 4, 9, 11, requires_grad=True)
    target = torch.randint(0, 4, (2, 9, 11))
    target[0, :3] = 255
    loss = build_loss([{"name": name}], ignore_index=255)(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # Ignored pixels get no gradient.
    assert logits.grad[0, :, :3].abs().sum() == 0
