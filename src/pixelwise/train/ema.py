"""Exponential moving average of the weights (Polyak averaging; as in timm's ModelEmaV2).

After every optimiser step ``ema = decay * ema + (1 - decay) * weight`` for each floating
parameter; buffers (BatchNorm running statistics, counters) are copied as they are, since
they are already averages. Evaluation and the saved ``best/`` model use the EMA weights.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..errors import ConfigError


class ModelEMA:
    """A frozen copy of ``model`` whose parameters track the EMA of ``model``'s.

    ``decay`` in ``(0, 1)``: the weight of the past; 0.999 averages over ~1000 steps.
    The copy lives on the model's device, in the model's dtype.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"train.ema_decay must lie in (0, 1), e.g. 0.999; got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current weights into the average (call after ``optimizer.step()``)."""
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach(), 1.0 - self.decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)

    def state_dict(self) -> dict[str, Tensor]:
        """The averaged weights (same keys as the model's ``state_dict``)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore :meth:`state_dict` (on resume)."""
        self.module.load_state_dict(state)
