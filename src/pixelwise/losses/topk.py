"""Cross-entropy on the hard pixels only: top-k % bootstrapping (Wu, Shen & van den
Hengel, "Bridging Category-level and Instance-level Semantic Image Segmentation", arXiv
2016) and online hard example mining (OHEM; Shrivastava, Gupta & Girshick, CVPR 2016,
applied per pixel as in the training code of PSPNet (Zhao et al., CVPR 2017) and OCNet
(Yuan & Wang, 2018))."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import LOSSES, register
from .options import LossOptions


def _per_element_ce(
    logits: Tensor, target: Tensor, options: LossOptions, *, class_weights: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Return ``(loss, weight)``: the (weighted) cross-entropy per element and the weight
    of each element's true class (all ones without ``class_weights``).

    Shapes are those :func:`~pixelwise.losses._targets.prepare` returns for ``target``:
    ``(N, *S)``, or ``(N, C, *S)`` for multilabel.
    """
    if options.mode == "multiclass":
        nll = F.cross_entropy(logits, target, reduction="none")
        if class_weights is None:
            return nll, torch.ones_like(nll)
        options.check_num_classes(logits.shape[1])
        weight = class_weights.to(logits.dtype)[target]
        return nll * weight, weight
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return bce, torch.ones_like(bce)


@register(LOSSES, "topk")
class TopKCrossEntropyLoss(nn.Module):
    """Cross-entropy averaged over the ``percent`` % non-ignored elements with the
    largest loss (the hardest pixels); the rest get no gradient.

    ``k = max(1, ceil(percent / 100 * n_valid))`` over the whole batch, so
    ``percent=100`` is plain cross-entropy. Counting ``n_valid`` reads one number from
    the device per call. With ``class_weights`` the weighted per-pixel losses are
    ranked and their plain mean taken. An all-ignored batch gives exactly 0.

    Shapes: multiclass logits ``(N, C, *S)`` + integer target ``(N, *S)`` (softmax CE);
    binary logits ``(N, 1, *S)`` or ``(N, *S)`` + target ``(N, *S)`` in ``[0, 1]``
    (sigmoid BCE); multilabel logits and target ``(N, C, *S)`` (BCE per element, the
    elements ranked together).

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        percent: share of the hardest elements to keep, in ``(0, 100]`` (nnU-Net's
            "TopK10" uses 10).
        class_weights: multiclass only, one weight per class.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        percent: float = 10.0,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        owner = "TopKCrossEntropyLoss"
        self.options = LossOptions(
            owner, mode=mode, ignore_index=ignore_index, class_weights=class_weights,
            weights_for=("multiclass",),
        )
        if not 0 < percent <= 100:
            raise ConfigError(
                f"{owner}: percent must be in (0, 100] but got {percent!r}; it is a "
                f"percentage, e.g. 10 for the hardest 10 %"
            )
        self.mode, self.ignore_index = self.options.mode, self.options.ignore_index
        self.percent = float(percent)
        self.register_buffer("class_weights", self.options.weight_buffer(), persistent=False)

    def extra_repr(self) -> str:
        return self.options.describe(percent=self.percent)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        logits, target, valid = self.options.prepare(logits, target)
        loss, _ = _per_element_ce(
            logits, target, self.options, class_weights=self.class_weights
        )
        num_valid = int(valid.sum())
        if num_valid == 0:
            return (loss * valid).sum()
        k = max(1, math.ceil(self.percent / 100.0 * num_valid))
        # Ignored elements rank below every real loss (>= 0), and k <= num_valid, so
        # they are never picked.
        ranked = torch.where(valid, loss, torch.full_like(loss, -math.inf)).flatten()
        return ranked.topk(k).values.mean()


@register(LOSSES, "ohem")
class OhemCrossEntropyLoss(nn.Module):
    """Online hard example mining cross-entropy: the mean cross-entropy over the
    non-ignored elements whose predicted probability of the true label is below
    ``threshold``, but always over at least ``min_kept`` elements.

    Selection (no gradient flows through it): keep the elements with
    ``p_true < threshold``; if fewer than ``min(min_kept, n_valid)`` qualify, keep the
    ``min(min_kept, n_valid)`` elements with the lowest ``p_true`` instead (ties broken
    arbitrarily). So with ``min_kept >= n_valid`` every labelled element is kept and the
    loss is plain cross-entropy, and with ``threshold > 1`` too. The defaults (0.7 and
    100 000 pixels per batch) are those of the PSPNet/OCNet training code.

    The mean is weighted as :func:`torch.nn.functional.cross_entropy` weighs it:
    ``sum(w * ce) / sum(w)`` over the kept elements, ``w`` the true class's weight (1
    without ``class_weights``). An all-ignored batch, or nothing kept, gives exactly 0.

    Shapes as :class:`TopKCrossEntropyLoss`; for binary/multilabel ``p_true`` is
    ``exp(-BCE)``, the probability of the true label for 0/1 targets.

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        threshold: elements predicted with less than this probability of their true
            label are hard.
        min_kept: the least number of elements to keep per batch (>= 0).
        class_weights: multiclass only, one weight per class.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        threshold: float = 0.7,
        min_kept: int = 100_000,
        class_weights: list[float] | None = None,
    ) -> None:
        super().__init__()
        owner = "OhemCrossEntropyLoss"
        self.options = LossOptions(
            owner, mode=mode, ignore_index=ignore_index, class_weights=class_weights,
            weights_for=("multiclass",),
        )
        if not threshold > 0:
            raise ConfigError(
                f"{owner}: threshold must be > 0 but got {threshold!r}; it is a "
                f"probability such as 0.7"
            )
        if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept < 0:
            raise ConfigError(f"{owner}: min_kept must be an int >= 0 but got {min_kept!r}")
        self.mode, self.ignore_index = self.options.mode, self.options.ignore_index
        self.threshold = float(threshold)
        self.min_kept = min_kept
        self.register_buffer("class_weights", self.options.weight_buffer(), persistent=False)

    def extra_repr(self) -> str:
        return self.options.describe(threshold=self.threshold, min_kept=self.min_kept)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        logits, target, valid = self.options.prepare(logits, target)
        loss, weight = _per_element_ce(
            logits, target, self.options, class_weights=self.class_weights
        )
        with torch.no_grad():
            if self.mode == "multiclass":
                log_p_true = logits.log_softmax(dim=1).gather(1, target.unsqueeze(1)).squeeze(1)
            else:
                log_p_true = -F.binary_cross_entropy_with_logits(
                    logits, target, reduction="none"
                )
            p_true = log_p_true.exp()
            kept = valid & (p_true < self.threshold)
            least = min(self.min_kept, int(valid.sum()))
            if int(kept.sum()) < least:
                easiness = torch.where(valid, p_true, torch.full_like(p_true, math.inf))
                lowest = (-easiness).flatten().topk(least).indices
                kept = torch.zeros_like(valid).flatten()
                kept[lowest] = True
                kept = kept.view_as(valid)
        kept = kept.to(loss.dtype)
        total = (loss * kept).sum()
        denominator = (weight * kept).sum()
        # Nothing kept: total is exactly 0; dividing by 1 keeps it 0 and in the graph.
        return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))
