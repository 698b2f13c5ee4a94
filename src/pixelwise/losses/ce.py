"""Pixel-wise cross-entropy: softmax CE for multiclass, sigmoid BCE for binary/multilabel.

Cross-entropy per pixel as in FCN (Long et al., "Fully Convolutional Networks for
Semantic Segmentation", CVPR 2015); label smoothing from Szegedy et al., "Rethinking
the Inception Architecture", CVPR 2016.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import LOSSES, register
from .options import REDUCTIONS, LossOptions

__all__ = ["REDUCTIONS", "CrossEntropyLoss"]


@register(LOSSES, "ce")
class CrossEntropyLoss(nn.Module):
    """Cross-entropy over the pixels (or voxels) that are not ``ignore_index``.

    Shapes (``*S`` is ``(H, W)`` or ``(D, H, W)``):

    - ``multiclass``: logits ``(N, C, *S)``, target ``(N, *S)`` integer in ``[0, C)``;
      softmax cross-entropy, optionally with ``class_weights`` and ``label_smoothing``.
    - ``binary``: logits ``(N, 1, *S)`` or ``(N, *S)``, target ``(N, *S)`` in ``[0, 1]``;
      sigmoid binary cross-entropy, optionally with ``pos_weight``.
    - ``multilabel``: logits and target ``(N, C, *S)``, target in ``[0, 1]``; an
      independent sigmoid BCE per class, optionally with ``pos_weight``.

    Reduction ``"mean"`` divides by the number of non-ignored elements or, in
    multiclass mode with ``class_weights``, by the sum of the weights of their true
    classes (the same weighted mean as :func:`torch.nn.functional.cross_entropy`).
    When every element is ignored the loss is exactly 0 (not NaN) and still part of the
    autograd graph, so a batch of unlabelled crops does not poison training.
    ``"sum"`` sums, ``"none"`` returns the per-element loss (``(N, *S)``, or
    ``(N, C, *S)`` for multilabel) with ignored elements set to 0.

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        class_weights: multiclass only, one weight per class, e.g. inverse frequencies.
        pos_weight: binary/multilabel only, weight of the positive term (>1 favours
            recall), as ``pos_weight`` of :class:`torch.nn.BCEWithLogitsLoss`.
        label_smoothing: multiclass only, in ``[0, 1)``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        class_weights: list[float] | None = None,
        pos_weight: float | None = None,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        owner = "CrossEntropyLoss"
        self.options = LossOptions(
            owner, mode=mode, ignore_index=ignore_index, reduction=reduction,
            class_weights=class_weights, weights_for=("multiclass",),
            weights_hint="use pos_weight for binary/multilabel",
        )
        if pos_weight is not None:
            if mode == "multiclass":
                raise ConfigError(
                    f"{owner}: pos_weight is for mode='binary' or 'multilabel'; use "
                    f"class_weights for multiclass"
                )
            if not (math.isfinite(pos_weight) and pos_weight > 0):
                raise ConfigError(f"{owner}: pos_weight must be > 0 but got {pos_weight!r}")
        if label_smoothing and mode != "multiclass":
            raise ConfigError(
                f"{owner}: label_smoothing is only defined for mode='multiclass' but mode "
                f"is {mode!r}; smooth the targets in the dataset instead"
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(
                f"{owner}: label_smoothing must be in [0, 1) but got {label_smoothing!r}"
            )
        self.mode, self.ignore_index = self.options.mode, self.options.ignore_index
        self.label_smoothing = float(label_smoothing)
        # Buffers follow .to(device); non-persistent so they never enter a checkpoint,
        # the constructor arguments are the saved config.
        self.register_buffer("class_weights", self.options.weight_buffer(), persistent=False)
        self.register_buffer(
            "pos_weight",
            None if pos_weight is None else torch.tensor(float(pos_weight)),
            persistent=False,
        )

    def extra_repr(self) -> str:
        return self.options.describe(label_smoothing=self.label_smoothing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the loss: a scalar, or per element for ``reduction="none"``."""
        logits, target, valid = self.options.prepare(logits, target)
        weight = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        if self.mode == "multiclass":
            self.options.check_num_classes(logits.shape[1])
            loss = F.cross_entropy(
                logits, target, weight=weight, reduction="none",
                label_smoothing=self.label_smoothing,
            )
        else:
            pos_weight = None if self.pos_weight is None else self.pos_weight.to(logits.dtype)
            loss = F.binary_cross_entropy_with_logits(
                logits, target, pos_weight=pos_weight, reduction="none"
            )
        # The mean is weighted as F.cross_entropy weighs it: by the true class's weight.
        counted = valid if weight is None else weight[target] * valid
        return self.options.reduce(loss * valid, counted)
