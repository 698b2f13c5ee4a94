"""The functional core every *region* loss shares (Dice, IoU, Tversky, focal Tversky,
sensitivity-specificity).

Three steps, one place each:

1. :func:`region_inputs`: probabilities and targets in one ``(N, K, *S)`` layout, with
   ignored elements zeroed in both (so they count nowhere and get no gradient);
2. :func:`soft_counts`: the soft true positives, false positives and false negatives per
   class (and per image with ``per_image``);
3. :func:`region_index`: ``(w * TP + smooth) / max(w * TP + alpha * FP + beta * FN + smooth,
   eps)``, which is Dice for ``w = 2, alpha = beta = 1``, IoU for ``w = alpha = beta = 1``
   and Tversky for ``w = 1``; then :meth:`LossOptions.class_mean
   <pixelwise.losses.options.LossOptions.class_mean>` weighs and averages the classes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .options import LossOptions


def region_inputs(
    logits: Tensor, target: Tensor, options: LossOptions, *, from_logits: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(probs, truth, valid)``, each broadcastable to ``(N, K, *S)``.

    ``K`` is ``C`` for multiclass (softmax, one-hot target) and multilabel (sigmoid), and
    1 for binary (sigmoid of the foreground). ``probs`` and ``truth`` are zero where the
    target is ignored. ``valid`` is a float mask, ``(N, 1, *S)`` for multiclass and binary
    and ``(N, C, *S)`` for multilabel. ``from_logits=False`` takes the input as
    probabilities already.
    """
    logits, target, valid = options.prepare(logits, target)
    if options.mode == "multiclass":
        probs = logits.softmax(dim=1) if from_logits else logits
        truth = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
        valid = valid.unsqueeze(1)
    else:
        probs = logits.sigmoid() if from_logits else logits
        truth = target
        if options.mode == "binary":
            probs, truth, valid = probs.unsqueeze(1), truth.unsqueeze(1), valid.unsqueeze(1)
    valid = valid.to(probs.dtype)
    return probs * valid, truth * valid, valid


def sum_dims(probs: Tensor, *, per_image: bool) -> tuple[int, ...]:
    """Dims of ``(N, K, *S)`` to sum over: ``*S`` per image, or ``N`` and ``*S`` per batch."""
    spatial = tuple(range(2, probs.dim()))
    return spatial if per_image else (0, *spatial)


def soft_counts(
    probs: Tensor, truth: Tensor, *, per_image: bool, squared: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """Soft ``(TP, FP, FN)``, each ``(N, K)`` with ``per_image`` else ``(K,)``::

        TP = sum(P * G),  FP = sum(P) - TP = sum(P * (1 - G)),  FN = sum(G) - TP

    over elements where ``probs`` and ``truth`` (``(N, K, *S)``, ignored elements zero
    in both, as :func:`region_inputs` gives them) are summed. With ``squared=True`` the
    sizes are ``sum(P**2)`` and ``sum(G**2)`` (V-Net's Dice denominator), so
    ``2 * TP + FP + FN = sum(P**2) + sum(G**2)``.
    """
    dims = sum_dims(probs, per_image=per_image)
    true_pos = (probs * truth).sum(dims)
    predicted = (probs * probs if squared else probs).sum(dims)
    actual = (truth * truth if squared else truth).sum(dims)
    return true_pos, predicted - true_pos, actual - true_pos


def region_index(
    true_pos: Tensor,
    false_pos: Tensor,
    false_neg: Tensor,
    *,
    smooth: float,
    eps: float,
    tp_weight: float = 1.0,
    alpha: float = 1.0,
    beta: float = 1.0,
) -> Tensor:
    """``(w * TP + smooth) / max(w * TP + alpha * FP + beta * FN + smooth, eps)``.

    Dice: ``w = 2, alpha = beta = 1`` (``2 I / (|P| + |G|)``); IoU: ``w = alpha = beta = 1``
    (``I / (|P| + |G| - I)``); Tversky: ``w = 1`` and the loss's ``alpha``, ``beta``.
    """
    denominator = tp_weight * true_pos + alpha * false_pos + beta * false_neg + smooth
    return (tp_weight * true_pos + smooth) / denominator.clamp_min(eps)


__all__ = ["region_index", "region_inputs", "soft_counts", "sum_dims"]
