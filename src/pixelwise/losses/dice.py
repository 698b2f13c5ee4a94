"""Soft Dice loss (Milletari et al., "V-Net: Fully Convolutional Neural Networks for
Volumetric Medical Image Segmentation", 3DV 2016)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import LOSSES, register
from ._targets import check_mode, prepare


@register(LOSSES, "dice")
class DiceLoss(nn.Module):
    """Soft Dice loss, ``1 - mean_c Dice_c``, on probabilities instead of hard labels.

    For each class ``c``, with ``P`` the predicted probabilities and ``G`` the one-hot
    (or 0/1, or soft) target, summed over the non-ignored elements::

        Dice_c = (2 * sum(P_c * G_c) + smooth) / (sum(P_c) + sum(G_c) + smooth)

    or with ``squared=True`` the V-Net denominator ``sum(P_c^2) + sum(G_c^2) + smooth``.
    The denominator is clamped to at least ``eps`` so that ``smooth=0`` cannot divide
    by zero. The loss is ``1 - mean`` of ``Dice_c`` over ``classes`` (all classes when
    ``None``), and with ``per_image=True`` over images as well.

    Shapes (``*S`` is ``(H, W)`` or ``(D, H, W)``):

    - ``multiclass``: logits ``(N, C, *S)``, target ``(N, *S)`` integer; softmax; Dice
      per class ``c`` in ``[0, C)``.
    - ``binary``: logits ``(N, 1, *S)`` or ``(N, *S)``, target ``(N, *S)`` in ``[0, 1]``;
      sigmoid; one Dice for the foreground only (background is not a class here).
    - ``multilabel``: logits and target ``(N, C, *S)``; sigmoid; Dice per channel.

    Ignored elements (target == ``ignore_index``) count in neither the numerator nor
    the denominator, and get no gradient.

    Classes absent from the target (``sum(G_c) == 0``, per batch or per image with
    ``per_image=True``) are *not* skipped:

    - with ``smooth > 0``, ``Dice_c = smooth / (sum(P_c) + smooth)``: 1 when the class is
      also not predicted, falling towards 0 as probability mass is put on it. Absent
      classes therefore still contribute and push false positives down; the larger
      ``smooth`` relative to the pixel count, the weaker that push.
    - with ``smooth == 0``, ``Dice_c = 0`` whatever the prediction: the class adds a
      constant ``1 / len(classes)`` to the loss and no gradient.

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        smooth: added to numerator and denominator (Laplace smoothing).
        squared: square the terms of the denominator, as in V-Net.
        classes: class (channel) indices to average over, e.g. ``[1, 2]`` to leave the
            background out; ``None`` means all.
        per_image: ``False``: one Dice per class over the whole batch (large objects
            dominate, stable with many empty images); ``True``: one Dice per image and
            class, then the mean (every image counts equally).
        from_logits: apply softmax (multiclass) or sigmoid (binary/multilabel) first;
            ``False`` when the input already holds probabilities.
        eps: lower bound of the denominator.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        smooth: float = 1.0,
        squared: bool = False,
        classes: list[int] | None = None,
        per_image: bool = False,
        from_logits: bool = True,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        check_mode(mode, owner="DiceLoss")
        if smooth < 0 or eps <= 0:
            raise ConfigError(f"DiceLoss: need smooth >= 0 and eps > 0 but got {smooth=}, {eps=}")
        if classes is not None:
            if len(classes) == 0 or any(not isinstance(c, int) or c < 0 for c in classes):
                raise ConfigError(
                    f"DiceLoss: classes must be a non-empty list of class indices >= 0 "
                    f"but got {classes!r}; use None for all classes"
                )
            if mode == "binary" and list(classes) != [0]:
                raise ConfigError(
                    f"DiceLoss: mode='binary' has the single class 0 but classes is {classes!r}; "
                    f"use classes=None"
                )
        self.mode = mode
        self.ignore_index = ignore_index
        self.smooth = float(smooth)
        self.squared = squared
        self.classes = None if classes is None else list(classes)
        self.per_image = per_image
        self.from_logits = from_logits
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, ignore_index={self.ignore_index}, smooth={self.smooth}, "
            f"classes={self.classes}, per_image={self.per_image}"
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss in ``[0, 1]``."""
        logits, target, valid = prepare(
            logits, target, mode=self.mode, ignore_index=self.ignore_index, owner="DiceLoss"
        )
        # Bring every mode to probabilities and targets of shape (N, K, *S).
        if self.mode == "multiclass":
            probs = logits.softmax(dim=1) if self.from_logits else logits
            truth = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
            valid = valid.unsqueeze(1)
        else:
            probs = logits.sigmoid() if self.from_logits else logits
            truth = target
            if self.mode == "binary":
                probs, truth, valid = probs.unsqueeze(1), truth.unsqueeze(1), valid.unsqueeze(1)
        probs = probs * valid
        truth = truth * valid

        dims = tuple(range(2, probs.dim())) if self.per_image else (0, *range(2, probs.dim()))
        intersection = (probs * truth).sum(dims)
        if self.squared:
            cardinality = (probs * probs).sum(dims) + (truth * truth).sum(dims)
        else:
            cardinality = probs.sum(dims) + truth.sum(dims)
        dice = (2.0 * intersection + self.smooth) / (cardinality + self.smooth).clamp_min(self.eps)

        if self.classes is not None:
            num_classes = probs.shape[1]
            if max(self.classes) >= num_classes:
                raise ValueError(
                    f"DiceLoss: classes {self.classes} includes {max(self.classes)} but the "
                    f"logits have {num_classes} classes; fix classes or num_classes"
                )
            dice = dice[..., self.classes]
        return 1.0 - dice.mean()
