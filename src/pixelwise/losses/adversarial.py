"""Adversarial loss for segmentation (Luc, Couprie, Chintala & Verbeek, NIPS-W 2016, arXiv:1611.08408).

A discriminator ``a(x, y)`` sees an image with a label map and says whether the map is the
ground truth (one-hot) or a prediction (softmax probabilities). The segmenter minimises
``CE(s(x), y) + λ · BCE(a(x, s(x)), 1)`` (the paper's "flipped" form, Eq. 3, which gives
stronger gradients early on); the discriminator minimises ``BCE(a(x, y), 1) +
BCE(a(x, s(x)), 0)`` (Eq. 2). Ignored pixels are zeroed in both label maps so the
discriminator cannot tell real from fake by where the ignore regions are.

This module gives the discriminator and the two loss terms; the training mode that
alternates the updates is separate (it needs two optimisers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

ENCODINGS = ("basic", "product")


def one_hot_labels(target: Tensor, num_classes: int, ignore_index: int | None = 255) -> Tensor:
    """``(N, H, W)`` labels -> ``(N, C, H, W)`` float one-hot; ignored pixels are all-zero."""
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    onehot = F.one_hot(torch.where(valid, target, 0).long(), num_classes).permute(0, 3, 1, 2).float()
    return onehot * valid[:, None]


class LabelMapDiscriminator(nn.Module):
    """``forward(image (N, 3, H, W), labels (N, C, H, W))`` -> real/fake logits ``(N,)``.

    Two input branches as in the paper's Stanford-Background model: a 5×5 convolution on
    the image and one on the label map (``encoding="basic"``), or one branch on the
    "product" encoding, the image multiplied by each class channel (``(N, 3·C, H, W)``),
    which the paper introduces so that the soft/one-hot difference alone is less telling.
    Then three 3×3 conv + ReLU + 2×2 max-pool stages and a global average to one logit.
    """

    def __init__(self, num_classes: int, *, in_channels: int = 3, width: int = 64, encoding: str = "basic") -> None:
        super().__init__()
        if encoding not in ENCODINGS:
            raise ConfigError(f"discriminator encoding {encoding!r} is unknown; valid: {', '.join(ENCODINGS)}")
        self.encoding = encoding
        if encoding == "basic":
            self.image_branch: nn.Module | None = nn.Sequential(nn.Conv2d(in_channels, width // 4, 5, padding=2),
                                                                nn.ReLU(inplace=True))
            self.label_branch = nn.Sequential(nn.Conv2d(num_classes, width - width // 4, 5, padding=2),
                                              nn.ReLU(inplace=True))
        else:
            self.image_branch = None
            self.label_branch = nn.Sequential(nn.Conv2d(in_channels * num_classes, width, 5, padding=2),
                                              nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        channels = width
        for out in (width * 2, width * 2, width * 4):
            layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            channels = out
        self.trunk = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(channels, 1, 1)

    def forward(self, image: Tensor, labels: Tensor) -> Tensor:
        if self.image_branch is not None:
            x = torch.cat([self.image_branch(image), self.label_branch(labels)], dim=1)
        else:
            product = (image[:, :, None] * labels[:, None]).flatten(1, 2)  # (N, 3, C, H, W) -> (N, 3C, H, W)
            x = self.label_branch(product)
        return self.classifier(self.trunk(x)).mean(dim=(1, 2, 3))


class AdversarialLoss(nn.Module):
    """The two adversarial terms of Luc et al. 2016 around a :class:`LabelMapDiscriminator`.

    ``generator_loss(image, logits, target)``: ``weight · BCE(a(x, softmax(logits)), 1)``,
    added to the segmentation loss (gradients reach the segmenter, not the discriminator's
    optimiser step). ``discriminator_loss(image, logits, target)``: ``BCE(a(x, y), 1) +
    BCE(a(x, softmax(logits).detach()), 0)``. Shapes: image ``(N, 3, H, W)``, logits
    ``(N, C, H, W)``, target ``(N, H, W)`` integer labels.
    """

    def __init__(self, discriminator: LabelMapDiscriminator, *, num_classes: int, weight: float = 0.1,
                 ignore_index: int | None = 255) -> None:
        super().__init__()
        self.discriminator = discriminator
        self.num_classes = num_classes
        self.weight = weight
        self.ignore_index = ignore_index

    def _fake(self, logits: Tensor, target: Tensor) -> Tensor:
        probs = logits.float().softmax(dim=1)
        if self.ignore_index is not None:
            probs = probs * (target != self.ignore_index)[:, None]
        return probs

    def generator_loss(self, image: Tensor, logits: Tensor, target: Tensor) -> Tensor:
        score = self.discriminator(image, self._fake(logits, target))
        return self.weight * F.binary_cross_entropy_with_logits(score, torch.ones_like(score))

    def discriminator_loss(self, image: Tensor, logits: Tensor, target: Tensor) -> Tensor:
        real = self.discriminator(image, one_hot_labels(target, self.num_classes, self.ignore_index))
        fake = self.discriminator(image, self._fake(logits.detach(), target))
        return (F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
