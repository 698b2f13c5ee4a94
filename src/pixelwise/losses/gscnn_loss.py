"""The dual-task loss of Gated-SCNN (Takikawa et al., ICCV 2019, arXiv:1907.05740, Sec. 3.2).

What is implemented, exactly (``K`` classes, ``p`` = softmax of the logits, ``y`` the
one-hot target, ``b`` = sigmoid of the boundary logits; ignored pixels never count):

1. Segmentation: cross-entropy of the logits (plus ``weight * CE`` of each auxiliary output).
2. Boundary (the paper's λ1 term): class-balanced binary cross-entropy of the boundary
   logits against the target's boundaries. A pixel is a boundary pixel when its label
   differs from its right or lower neighbour (:func:`mask_boundaries`). Positives are
   weighted by the fraction of negatives and negatives by the fraction of positives, per
   batch (the HED balancing the paper uses).
3. Dual-task regulariser, simplified:

   - consistency (the paper's λ3 term): ζ(q) = (1/√2)·‖∇q‖ over the class maps, with
     forward differences, clipped to [0, 1]; the paper applies it to a Gumbel-softmax
     "argmax" smoothed by a Gaussian, here directly to the softmax ``p`` (differentiable,
     no sampling, no smoothing). The loss is the mean of |ζ(p) − ζ(y)| over pixels that
     are boundaries in the target or where ζ(p) > 0.5 (the paper's p⁺).
   - boundary-guided CE (the paper's λ4 term): the segmentation CE averaged over the
     pixels where ``b > attention_threshold`` (0.8), i.e. the prediction must be right
     where the shape stream claims a boundary. The boundary map is detached here, as it
     only selects pixels.

Defaults: boundary_weight 20 (the factor the authors' released loss puts on its boundary
BCE), consistency_weight 1, attention_weight 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.model import SegmentationOutput


def _one_hot(target: Tensor, num_classes: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    """``(N, H, W)`` labels -> one-hot ``(N, K, H, W)`` float and valid mask ``(N, 1, H, W)`` bool."""
    valid = target != ignore_index
    labels = torch.where(valid, target, torch.zeros_like(target))
    if int(labels.max()) >= num_classes or int(labels.min()) < 0:
        raise ValueError(f"target has labels outside 0..{num_classes - 1} (min {int(labels.min())}, max "
                         f"{int(labels.max())}); set ignore_index ({ignore_index}) or the model's num_classes")
    onehot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2).float()
    return onehot, valid.unsqueeze(1)


def gradient_magnitude(q: Tensor) -> Tensor:
    """ζ: ``(N, K, H, W)`` class maps -> ``(N, 1, H, W)`` in [0, 1].

    (1/√2)·sqrt(Σ_k (Δx q_k)² + (Δy q_k)²) with forward differences (0 at the last
    row/column); between two one-hot regions across a horizontal or vertical edge it is 1.
    """
    dx = F.pad(q[..., :, 1:] - q[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(q[..., 1:, :] - q[..., :-1, :], (0, 0, 0, 1))
    # The epsilon keeps the sqrt differentiable where the map is flat.
    mag = ((dx.square() + dy.square()).sum(dim=1, keepdim=True) + 1e-8).sqrt() / math.sqrt(2.0)
    return mag.clamp(max=1.0)


def _valid_pairs(valid: Tensor) -> Tensor:
    """A pixel's forward differences are meaningful when it and its right and lower neighbours are valid."""
    right = F.pad(valid[..., :, 1:], (0, 1, 0, 0), value=True)
    down = F.pad(valid[..., 1:, :], (0, 0, 0, 1), value=True)
    return valid & right & down


def mask_boundaries(target: Tensor, num_classes: int, *, ignore_index: int = 255) -> tuple[Tensor, Tensor]:
    """Boundaries of a label map: ``(N, H, W)`` -> (edges ``(N, 1, H, W)`` float 0/1, valid ``(N, 1, H, W)`` bool).

    A pixel is an edge when its label differs from its right or lower neighbour; pixels
    next to ``ignore_index`` are not valid (their edge status is unknown).
    """
    onehot, valid = _one_hot(target, num_classes, ignore_index)
    edges = (gradient_magnitude(onehot) > 0.5).float()
    return edges, _valid_pairs(valid)


def dual_task_losses(output: SegmentationOutput, target: Tensor, *, ignore_index: int = 255,
                     boundary_weight: float = 20.0, consistency_weight: float = 1.0, attention_weight: float = 1.0,
                     attention_threshold: float = 0.8) -> dict[str, Tensor]:
    """The weighted terms of :func:`gscnn_loss` by name: ``segmentation``, ``boundary``,
    ``consistency``, ``attention`` (each a scalar, already multiplied by its weight)."""
    if output.boundary is None:
        raise ValueError("gscnn_loss needs output.boundary (the shape stream's logits); call the model in "
                         "training mode (model.train()) and use a model with a shape stream such as 'gscnn'")
    logits, boundary = output.logits.float(), output.boundary.float()
    target = target.long()
    seg = F.cross_entropy(logits, target, ignore_index=ignore_index)
    for aux, weight in zip(output.aux, output.aux_weights):
        seg = seg + weight * F.cross_entropy(aux.float(), target, ignore_index=ignore_index)

    onehot, valid = _one_hot(target, logits.shape[1], ignore_index)
    pairs = _valid_pairs(valid)
    gt_zeta = gradient_magnitude(onehot)
    edges = (gt_zeta > 0.5).float()
    pos = (edges * pairs).sum()
    neg = ((1 - edges) * pairs).sum()
    total = (pos + neg).clamp(min=1.0)
    weight = torch.where(edges > 0, neg / total, pos / total) * pairs
    bce = F.binary_cross_entropy_with_logits(boundary, edges, weight=weight, reduction="sum") / total

    zeta = gradient_magnitude(logits.softmax(dim=1))
    region = pairs & ((edges > 0) | (zeta.detach() > 0.5))
    consistency = ((zeta - gt_zeta).abs() * region).sum() / region.sum().clamp(min=1)

    ce_map = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none").unsqueeze(1)
    confident = (torch.sigmoid(boundary.detach()) > attention_threshold) & valid
    attention = (ce_map * confident).sum() / confident.sum().clamp(min=1)
    return {"segmentation": seg, "boundary": boundary_weight * bce,
            "consistency": consistency_weight * consistency, "attention": attention_weight * attention}


def gscnn_loss(output: SegmentationOutput, target: Tensor, *, ignore_index: int = 255,
               boundary_weight: float = 20.0, consistency_weight: float = 1.0, attention_weight: float = 1.0,
               attention_threshold: float = 0.8) -> Tensor:
    """Gated-SCNN loss: ``output`` from a training-mode ``gscnn`` (logits ``(N, K, H, W)``,
    boundary ``(N, 1, H, W)``), ``target`` ``(N, H, W)`` labels -> scalar. See the module docstring."""
    parts = dual_task_losses(output, target, ignore_index=ignore_index, boundary_weight=boundary_weight,
                             consistency_weight=consistency_weight, attention_weight=attention_weight,
                             attention_threshold=attention_threshold)
    return sum(parts.values())


class DualTaskLoss(nn.Module):
    """:func:`gscnn_loss` as a module, its weights fixed at construction."""

    def __init__(self, *, ignore_index: int = 255, boundary_weight: float = 20.0, consistency_weight: float = 1.0,
                 attention_weight: float = 1.0, attention_threshold: float = 0.8) -> None:
        super().__init__()
        self.kwargs = {"ignore_index": ignore_index, "boundary_weight": boundary_weight,
                       "consistency_weight": consistency_weight, "attention_weight": attention_weight,
                       "attention_threshold": attention_threshold}

    def forward(self, output: SegmentationOutput, target: Tensor) -> Tensor:
        return gscnn_loss(output, target, **self.kwargs)
