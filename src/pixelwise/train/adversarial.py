"""Adversarial training mode (Luc, Couprie, Chintala & Verbeek 2016, "Semantic Segmentation
using Adversarial Networks", arXiv:1611.08408).

The segmenter minimises ``seg_loss + weight * BCE(a(x, softmax(s(x))), 1)``; the
discriminator ``a`` minimises ``BCE(a(x, y), 1) + BCE(a(x, s(x)), 0)`` with its own Adam
optimiser. The two updates alternate every micro-batch: the discriminator step uses the
segmenter's (detached) prediction of the same batch. Configured by ``train.adversarial``::

    adversarial: {weight: 0.1, lr: 1.0e-4, width: 64, encoding: basic, betas: [0.5, 0.999]}
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..errors import ConfigError
from ..losses.adversarial import AdversarialLoss, LabelMapDiscriminator
from .distributed import DistEnv, average_gradients

DEFAULTS: dict[str, Any] = {"weight": 0.1, "lr": 1e-4, "width": 64, "encoding": "basic", "betas": [0.5, 0.999]}


class AdversarialTrainer:
    """The discriminator, its optimiser and the two loss terms around them.

    ``generator_loss(image, logits, target)`` -> scalar to add to the segmentation loss;
    ``discriminator_step(image, logits, target)`` -> the discriminator's loss after one
    Adam step. Shapes: image ``(N, 3, H, W)``, logits ``(N, C, H, W)``, target ``(N, H, W)``.
    In a multi-process job the discriminator's gradients are averaged over the ranks.
    """

    def __init__(self, options: dict[str, Any], *, num_classes: int, in_channels: int, ignore_index: int,
                 device: torch.device, env: DistEnv) -> None:
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise ConfigError(f"train.adversarial has unknown key(s) {sorted(unknown)}; valid: {', '.join(DEFAULTS)}")
        o = {**DEFAULTS, **options}
        if not (isinstance(o["weight"], (int, float)) and o["weight"] >= 0 and o["lr"] > 0):
            raise ConfigError(f"train.adversarial needs weight >= 0 and lr > 0, got {o['weight']!r}, {o['lr']!r}")
        self.options, self.env = o, env
        self.discriminator = LabelMapDiscriminator(num_classes, in_channels=in_channels, width=int(o["width"]),
                                                   encoding=o["encoding"]).to(device)
        self.loss = AdversarialLoss(self.discriminator, num_classes=num_classes, weight=float(o["weight"]),
                                    ignore_index=ignore_index)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=float(o["lr"]),
                                          betas=tuple(o["betas"]))
        # Identical initial weights on every rank (each rank seeded alike, but be explicit).
        if env.distributed:
            for p in self.discriminator.parameters():
                torch.distributed.broadcast(p.data, src=0)

    def generator_loss(self, image: Tensor, logits: Tensor, target: Tensor) -> Tensor:
        return self.loss.generator_loss(image.float(), logits.float(), target)

    def discriminator_step(self, image: Tensor, logits: Tensor, target: Tensor) -> float:
        # The segmenter's backward also left gradients here; they are not the D objective.
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss.discriminator_loss(image.float(), logits.detach().float(), target)
        loss.backward()
        average_gradients(self.env, self.discriminator)
        self.optimizer.step()
        return float(loss.item())

    def state_dict(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])
