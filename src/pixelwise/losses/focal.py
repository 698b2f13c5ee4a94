"""Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), per pixel."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import LOSSES, register
from .options import LossOptions


@register(LOSSES, "focal")
class FocalLoss(nn.Module):
    """Focal loss ``FL = -alpha_t * (1 - p_t) ** gamma * log(p_t)`` per pixel.

    ``p_t`` is the predicted probability of the true label, so well-classified pixels
    (``p_t`` near 1) are down-weighted by ``(1 - p_t) ** gamma`` and the loss
    concentrates on the hard ones. ``gamma=0, alpha=None`` is exactly the cross-entropy
    of :class:`~pixelwise.losses.ce.CrossEntropyLoss`.

    Shapes (``*S`` is ``(H, W)`` or ``(D, H, W)``):

    - ``multiclass``: logits ``(N, C, *S)``, target ``(N, *S)`` integer; softmax;
      ``alpha`` is ``None`` or one weight per class (``alpha_t = alpha[target]``).
    - ``binary``: logits ``(N, 1, *S)`` or ``(N, *S)``, target ``(N, *S)`` in ``[0, 1]``;
      sigmoid; ``alpha`` is ``None`` or a scalar in ``[0, 1]`` weighing the positives,
      ``alpha_t = alpha * t + (1 - alpha) * (1 - t)`` as in the paper (which used 0.25).
    - ``multilabel``: logits and target ``(N, C, *S)``; sigmoid per channel; ``alpha`` is
      ``None``, a scalar as for binary, or one such scalar per channel.

    For binary/multilabel, ``p_t = exp(-BCE(x, t))``: the probability of the true label
    for 0/1 targets, and a smooth generalisation for soft targets.

    Reduction ``"mean"`` divides by the number of non-ignored elements (``alpha`` weighs
    terms, it does not renormalise: with ``gamma=0`` and a per-class ``alpha`` the
    ``"sum"`` equals ``CrossEntropyLoss(class_weights=alpha, reduction="sum")``). An
    all-ignored batch gives exactly 0, still in the graph. ``"none"`` returns ``(N, *S)``
    (``(N, C, *S)`` for multilabel) with ignored elements 0.

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        alpha: class balance weight, see above; ``None`` for none.
        gamma: focusing exponent ``>= 0`` (the paper's best was 2).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        alpha: float | list[float] | None = None,
        gamma: float = 2.0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        owner = "FocalLoss"
        self.options = LossOptions(owner, mode=mode, ignore_index=ignore_index, reduction=reduction)
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real) or not gamma >= 0:
            raise ConfigError(f"{owner}: gamma must be a number >= 0 but got {gamma!r}")
        if alpha is not None:
            alpha = self._check_alpha(alpha, mode=mode, owner=owner)
        self.mode, self.ignore_index = self.options.mode, self.options.ignore_index
        self.gamma = float(gamma)
        # Kept as Python numbers and made a tensor in forward, in the logits' dtype and
        # on their device: exact in float64 and nothing to move with .to(device).
        self.alpha = alpha

    @staticmethod
    def _check_alpha(alpha, *, mode: str, owner: str) -> float | list[float]:
        scalar = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
        if mode == "multiclass":
            if scalar:
                raise ConfigError(
                    f"{owner}: a scalar alpha={alpha!r} weighs positives against negatives, "
                    f"which is for mode='binary' or 'multilabel'; in multiclass mode give "
                    f"one weight per class, e.g. alpha=[0.25, 1.0, 1.0]"
                )
            if len(alpha) == 0 or any(not a >= 0 for a in alpha):
                raise ConfigError(
                    f"{owner}: alpha must be one weight >= 0 per class but got {alpha!r}"
                )
            return [float(a) for a in alpha]
        if mode == "binary" and not scalar:
            raise ConfigError(
                f"{owner}: mode='binary' takes a scalar alpha in [0, 1] (the weight of the "
                f"positives) but got {alpha!r}"
            )
        values = [alpha] if scalar else list(alpha)
        if len(values) == 0 or any(not 0 <= a <= 1 for a in values):
            raise ConfigError(
                f"{owner}: alpha weighs positives by alpha and negatives by 1 - alpha, so it "
                f"must lie in [0, 1] but got {alpha!r}"
            )
        return float(alpha) if scalar else [float(a) for a in alpha]

    def extra_repr(self) -> str:
        return self.options.describe(alpha=self.alpha, gamma=self.gamma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the loss: a scalar, or per element for ``reduction="none"``."""
        logits, target, valid = self.options.prepare(logits, target)
        alpha = (
            None
            if self.alpha is None
            else torch.tensor(self.alpha, dtype=logits.dtype, device=logits.device)
        )
        if self.mode == "multiclass":
            log_pt = logits.log_softmax(dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
            if alpha is not None:
                if alpha.numel() != logits.shape[1]:
                    raise ValueError(
                        f"FocalLoss: alpha has {alpha.numel()} entries but the logits have "
                        f"{logits.shape[1]} classes; give one weight per class"
                    )
                alpha = alpha[target]
        else:
            log_pt = -F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            if alpha is not None:
                if alpha.dim() == 1:
                    if self.mode != "multilabel" or alpha.numel() != logits.shape[1]:
                        raise ValueError(
                            f"FocalLoss: alpha has {alpha.numel()} entries but the logits "
                            f"have {logits.shape[1]} channels; give one per channel"
                        )
                    alpha = alpha.view(1, -1, *([1] * (logits.dim() - 2)))
                alpha = alpha * target + (1.0 - alpha) * (1.0 - target)

        loss = -log_pt
        if self.gamma > 0:
            # 1 - p_t via expm1 keeps precision when p_t is close to 1. The clamp keeps
            # the power's derivative finite at p_t == 1 for gamma < 1 (the true limit
            # of the whole term's gradient there is 0, which the clamp gives).
            one_minus_pt = (-torch.expm1(log_pt)).clamp_min(torch.finfo(log_pt.dtype).tiny)
            loss = loss * one_minus_pt**self.gamma
        if alpha is not None:
            loss = loss * alpha
        return self.options.reduce(loss * valid, valid)
