"""Soft Dice loss (Milletari et al., "V-Net: Fully Convolutional Neural Networks for
Volumetric Medical Image Segmentation", 3DV 2016)."""

from __future__ import annotations

from torch import Tensor, nn

from ..registry import LOSSES, register
from .options import LossOptions
from .region import region_index, region_inputs, soft_counts


@register(LOSSES, "dice")
class DiceLoss(nn.Module):
    """Soft Dice loss, ``1 - mean_c Dice_c``, on probabilities instead of hard labels.

    For each class ``c``, with ``P`` the predicted probabilities and ``G`` the one-hot
    (or 0/1, or soft) target, summed over the non-ignored elements::

        Dice_c = (2 * sum(P_c * G_c) + smooth) / (sum(P_c) + sum(G_c) + smooth)

    or with ``squared=True`` the V-Net denominator ``sum(P_c^2) + sum(G_c^2) + smooth``.
    The denominator is clamped to at least ``eps`` so that ``smooth=0`` cannot divide
    by zero. The loss is ``1 - mean`` of ``Dice_c`` over ``classes`` (all classes when
    ``None``; weighted by ``class_weights``), and with ``per_image=True`` over images as
    well. The sums and the index come from the region core,
    :mod:`pixelwise.losses.region` (Dice is its index with ``tp_weight=2``).

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
        class_weights: one weight per class for the mean over classes (multiclass and
            multilabel); ``None`` weighs all equally.
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
        class_weights: list[float] | None = None,
        per_image: bool = False,
        from_logits: bool = True,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        self.options = LossOptions(
            "DiceLoss", mode=mode, ignore_index=ignore_index, classes=classes,
            class_weights=class_weights, smooth=smooth, eps=eps,
        )
        self.mode, self.ignore_index = self.options.mode, self.options.ignore_index
        self.squared = squared
        self.per_image = per_image
        self.from_logits = from_logits

    def extra_repr(self) -> str:
        return self.options.describe(squared=self.squared, per_image=self.per_image)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss in ``[0, 1]``."""
        o = self.options
        probs, truth, _ = region_inputs(logits, target, o, from_logits=self.from_logits)
        counts = soft_counts(probs, truth, per_image=self.per_image, squared=self.squared)
        dice = region_index(*counts, smooth=o.smooth, eps=o.eps, tp_weight=2.0)
        return 1.0 - o.class_mean(dice)
