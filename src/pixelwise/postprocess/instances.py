"""Instances to a semantic label map: the per-pixel class of the best-scoring instance."""

from __future__ import annotations

import torch
from torch import Tensor


def instances_to_semantic(masks: Tensor, labels: Tensor, scores: Tensor, *, score_threshold: float = 0.5,
                          mask_threshold: float = 0.5) -> Tensor:
    """Per-pixel class of the highest-scoring instance covering it (0 where none).

    Args:
        masks: ``(D, H, W)`` mask probabilities; labels ``(D,)``; scores ``(D,)``.
        score_threshold: instances scoring below it are ignored.
        mask_threshold: a pixel belongs to an instance where its probability is above it.

    Returns:
        ``(H, W)`` int64 label map, for :class:`pixelwise.metrics.ConfusionMatrix`.
    """
    if masks.ndim != 3:
        raise ValueError(f"instances_to_semantic: masks must be (D, H, W), got {tuple(masks.shape)}")
    keep = scores >= score_threshold
    masks, labels, scores = masks[keep], labels[keep], scores[keep]
    semantic = torch.zeros(masks.shape[1:], dtype=torch.int64, device=masks.device)
    if len(labels) == 0:
        return semantic
    # Score where the instance covers the pixel, -1 elsewhere; the best score wins the pixel.
    covered = masks > mask_threshold
    ranked = torch.where(covered, scores.float()[:, None, None], torch.full_like(masks, -1.0, dtype=torch.float32))
    best, index = ranked.max(dim=0)
    return torch.where(best >= 0, labels.long()[index], semantic)
