"""The decision from network outputs to labels, in one place for every semantic mode.

- ``multiclass``: ``C`` logits per pixel, softmax probabilities, label = argmax.
- ``binary``: one logit ``z`` per pixel, probability ``sigmoid(z)``, label = ``z > 0``
  (equivalently probability > 0.5), i.e. 1 foreground and 0 background.
- ``multilabel``: ``C`` independent logits per pixel (classes may overlap), a sigmoid per
  class, class ``c`` is present where its logit is ``> 0``; the label map packs the
  present classes as bits, ``label = sum_c 2**c * [z_c > 0]`` (the layout of multilabel
  masks on disk, see :func:`bits_to_multilabel`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError

MODES = ("binary", "multiclass", "multilabel")


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else a ConfigError naming the choices."""
    if mode not in MODES:
        raise ConfigError(f"segmentation mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


def activation(mode: str) -> str:
    """``"softmax"`` for multiclass, ``"sigmoid"`` for binary and multilabel."""
    return "softmax" if check_mode(mode) == "multiclass" else "sigmoid"


def probabilities(logits: Tensor, mode: str) -> Tensor:
    """``(N, C, ...)`` logits -> probabilities of the same shape (softmax over C, or sigmoid)."""
    return logits.softmax(1) if activation(mode) == "softmax" else logits.sigmoid()


def labels_from_probs(probs: Tensor, mode: str) -> Tensor:
    """``(N, C, ...)`` probabilities -> ``(N, ...)`` int64 labels (see the module docstring)."""
    check_mode(mode)
    if mode == "multiclass":
        return probs.argmax(1)
    present = probs > 0.5  # sigmoid(z) > 0.5  <=>  z > 0
    if mode == "binary":
        return present[:, 0].long()
    bits = (2 ** torch.arange(probs.shape[1], device=probs.device)).view(1, -1, *([1] * (probs.dim() - 2)))
    return (present.long() * bits).sum(1)


def labels_from_logits(logits: Tensor, mode: str) -> Tensor:
    """``(N, C, ...)`` logits -> ``(N, ...)`` int64 labels: argmax, or ``z > 0`` (packed as bits for multilabel)."""
    check_mode(mode)
    if mode == "multiclass":
        return logits.argmax(1)
    return labels_from_probs((logits > 0).float(), mode)


def bits_to_multilabel(mask: Tensor, num_classes: int, *, ignore_index: int | None = 255) -> Tensor:
    """``(N, ...)`` bit-packed labels (bit ``c`` set: class ``c`` present) -> ``(N, C, ...)``
    float targets in {0, 1}; pixels equal to ``ignore_index`` are ``ignore_index`` in every class."""
    bits = (2 ** torch.arange(num_classes, device=mask.device)).view(1, -1, *([1] * (mask.dim() - 1)))
    target = ((mask.long().unsqueeze(1) & bits) > 0).float()
    if ignore_index is not None:
        target = torch.where((mask == ignore_index).unsqueeze(1), torch.full_like(target, float(ignore_index)), target)
    return target
