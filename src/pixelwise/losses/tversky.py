"""Tversky loss (Salehi et al., "Tversky loss function for image segmentation using 3D
fully convolutional deep networks", MLMI 2017) and focal Tversky loss (Abraham & Khan,
"A Novel Focal Tversky Loss Function with Improved Attention U-Net for Lesion
Segmentation", ISBI 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import LOSSES, register
from .options import LossOptions
from .region import region_index, region_inputs, soft_counts


def _configure(module: nn.Module, owner: str, *, mode: str, ignore_index: int | None, alpha: float,
               beta: float, smooth: float, classes: list[int] | None, class_weights: list[float] | None,
               per_image: bool, from_logits: bool, eps: float) -> None:
    """Check and store the options both Tversky losses share (error messages name ``owner``)."""
    module.options = LossOptions(owner, mode=mode, ignore_index=ignore_index, classes=classes,
                                 class_weights=class_weights, smooth=smooth, eps=eps)
    if not (alpha >= 0 and beta >= 0 and alpha + beta > 0):
        raise ConfigError(
            f"{owner}: alpha (false-positive weight) and beta (false-negative weight) must "
            f"be >= 0 and not both 0 but got {alpha=}, {beta=}; e.g. alpha=0.3, beta=0.7"
        )
    module.mode, module.ignore_index = module.options.mode, module.options.ignore_index
    module.alpha, module.beta = float(alpha), float(beta)
    module.per_image = per_image
    module.from_logits = from_logits


def _class_index(module: nn.Module, logits: Tensor, target: Tensor) -> Tensor:
    """Per-class (or per-image-and-class) Tversky index, ``(N, K)`` with ``per_image``
    else ``(K,)``, for a module set up by :func:`_configure`::

        TI = (TP + smooth) / max(TP + alpha * FP + beta * FN + smooth, eps)
    """
    o = module.options
    probs, truth, _ = region_inputs(logits, target, o, from_logits=module.from_logits)
    counts = soft_counts(probs, truth, per_image=module.per_image)
    return region_index(*counts, smooth=o.smooth, eps=o.eps, alpha=module.alpha, beta=module.beta)


@register(LOSSES, "tversky")
class TverskyLoss(nn.Module):
    """Tversky loss, ``1 - mean_c TI_c``, a Dice loss that weighs false positives by
    ``alpha`` and false negatives by ``beta`` (the region core's index, :func:`~pixelwise.losses.region.region_index`).

    ``beta > alpha`` trades precision for recall, which helps small structures (Salehi
    et al. found ``alpha=0.3, beta=0.7`` best for lesions). Special cases:
    ``alpha = beta = 0.5`` is the soft Dice loss (with ``smooth`` halved:
    ``TverskyLoss(smooth=s / 2) == DiceLoss(smooth=s)``), and ``alpha = beta = 1`` is the
    soft IoU loss.

    Shapes, ignored elements and absent classes behave as in
    :class:`~pixelwise.losses.jaccard.JaccardLoss`: multiclass logits ``(N, C, *S)`` +
    integer target ``(N, *S)``; binary logits ``(N, 1, *S)`` or ``(N, *S)`` + target
    ``(N, *S)``; multilabel logits and target ``(N, C, *S)``.

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        alpha: weight of the false positives.
        beta: weight of the false negatives.
        smooth: added to numerator and denominator.
        classes: class (channel) indices to average over; ``None`` means all.
        class_weights: one weight per class for the mean over classes.
        per_image: one index per image and class, then the mean.
        from_logits: apply softmax/sigmoid first.
        eps: lower bound of the denominator.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        alpha: float = 0.3,
        beta: float = 0.7,
        smooth: float = 1.0,
        classes: list[int] | None = None,
        class_weights: list[float] | None = None,
        per_image: bool = False,
        from_logits: bool = True,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        _configure(self, "TverskyLoss", mode=mode, ignore_index=ignore_index, alpha=alpha, beta=beta, smooth=smooth,
                   classes=classes, class_weights=class_weights, per_image=per_image, from_logits=from_logits,
                   eps=eps)

    def extra_repr(self) -> str:
        return self.options.describe(alpha=self.alpha, beta=self.beta)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss in ``[0, 1]``."""
        index = _class_index(self, logits, target)
        return 1.0 - self.options.class_mean(index)


@register(LOSSES, "focal_tversky")
class FocalTverskyLoss(nn.Module):
    """Focal Tversky loss, ``mean_c (1 - TI_c) ** (1 / gamma)`` (Abraham & Khan 2019).

    ``TI_c`` is the Tversky index of :class:`TverskyLoss`. With ``gamma > 1`` the
    exponent ``1 / gamma < 1`` lifts small losses more than large ones and steepens the
    gradient as ``TI_c`` nears 1, so training keeps pushing on classes (typically small
    lesions) that are nearly but not quite right. The exponent is ``1/gamma`` as in
    the paper, which found ``gamma = 4/3`` best; ``gamma = 1`` is the Tversky loss. The
    paper sums over classes; this averages (like the other region losses) so the scale
    does not grow with the number of classes.

    ``1 - TI`` is clamped at the smallest positive float before the power: the
    derivative of ``x ** (1/gamma)`` is infinite at ``x = 0`` (a perfect prediction),
    which would turn into NaN gradients.

    Shapes and arguments as :class:`TverskyLoss`, plus ``gamma > 0``. Defaults follow
    the paper (``alpha=0.3, beta=0.7, gamma=4/3``).
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 4.0 / 3.0,
        smooth: float = 1.0,
        classes: list[int] | None = None,
        class_weights: list[float] | None = None,
        per_image: bool = False,
        from_logits: bool = True,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        _configure(self, "FocalTverskyLoss", mode=mode, ignore_index=ignore_index, alpha=alpha, beta=beta,
                   smooth=smooth, classes=classes, class_weights=class_weights, per_image=per_image,
                   from_logits=from_logits, eps=eps)
        if not gamma > 0:
            raise ConfigError(
                f"FocalTverskyLoss: gamma must be > 0 but got {gamma!r}; the paper uses 1 to 3 (4/3 best)"
            )
        self.gamma = float(gamma)

    def extra_repr(self) -> str:
        return self.options.describe(alpha=self.alpha, beta=self.beta, gamma=self.gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss in ``[0, 1]``."""
        index = _class_index(self, logits, target)
        tiny = torch.finfo(index.dtype).tiny
        focal = (1.0 - index).clamp_min(tiny) ** (1.0 / self.gamma)
        return self.options.class_mean(focal)
