"""Soft IoU (Jaccard) loss (Rahman & Wang, "Optimizing Intersection-Over-Union in Deep
Neural Networks for Image Segmentation", ISVC 2016).

The sums and the index come from the region core shared with Dice and Tversky,
:mod:`pixelwise.losses.region`.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..registry import LOSSES, register
from .options import LossOptions
from .region import region_index, region_inputs, soft_counts


@register(LOSSES, "iou")
class JaccardLoss(nn.Module):
    """Soft IoU (Jaccard) loss, ``1 - mean_c IoU_c``, on probabilities.

    For each class ``c``, with ``P`` the predicted probabilities and ``G`` the one-hot
    (or 0/1, or soft) target, summed over the non-ignored elements::

        I_c = sum(P_c * G_c)
        U_c = sum(P_c) + sum(G_c) - I_c
        IoU_c = (I_c + smooth) / max(U_c + smooth, eps)

    Rahman & Wang use ``1 - I / U`` for one foreground class; the class mean,
    ``smooth`` and ``eps`` are the usual generalisation. On hard 0/1 probabilities with
    ``smooth=0`` the loss is ``1 - mIoU`` exactly.

    Shapes (``*S`` is ``(H, W)`` or ``(D, H, W)``): multiclass logits ``(N, C, *S)`` with
    an integer target ``(N, *S)`` (softmax); binary logits ``(N, 1, *S)`` or ``(N, *S)``
    with a target ``(N, *S)`` in ``[0, 1]`` (sigmoid, foreground only); multilabel logits
    and target ``(N, C, *S)`` (sigmoid per channel). Ignored elements count nowhere and
    get no gradient. An absent class with ``smooth > 0`` scores
    ``smooth / (sum(P_c) + smooth)``: it still pushes its false positives down.

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        smooth: added to numerator and denominator.
        classes: class (channel) indices to average over; ``None`` means all.
        class_weights: one weight per class for the mean over classes (multiclass and
            multilabel); ``None`` weighs all equally.
        per_image: one IoU per image and class, then the mean, instead of one per class
            over the whole batch.
        from_logits: apply softmax/sigmoid first; ``False`` when the input holds
            probabilities.
        eps: lower bound of the denominator.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        smooth: float = 1.0,
        classes: list[int] | None = None,
        class_weights: list[float] | None = None,
        per_image: bool = False,
        from_logits: bool = True,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        self.options = LossOptions(
            "JaccardLoss", mode=mode, ignore_index=ignore_index, classes=classes,
            class_weights=class_weights, smooth=smooth, eps=eps,
        )
        self.mode, self.ignore_index = self.options.mode, self.options.ignore_index
        self.per_image = per_image
        self.from_logits = from_logits

    def extra_repr(self) -> str:
        return self.options.describe(per_image=self.per_image)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss in ``[0, 1]``."""
        o = self.options
        probs, truth, _ = region_inputs(logits, target, o, from_logits=self.from_logits)
        counts = soft_counts(probs, truth, per_image=self.per_image)
        return 1.0 - o.class_mean(region_index(*counts, smooth=o.smooth, eps=o.eps))
