"""Per-class IoU and Dice for multilabel segmentation (classes may overlap in a pixel).

Each class is its own binary problem: true positives, false positives and false negatives
are summed over the dataset for every class at once (one reduction over the batch and
pixel axes, no loop over classes or pixels). ``IoU_c = TP / (TP + FP + FN)``,
``Dice_c = 2 TP / (2 TP + FP + FN)``; a class absent from both prediction and ground truth
is NaN and left out of the means.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor


class MultilabelScores:
    """Accumulates ``(N, C, ...)`` boolean predictions and ``(N, C, ...)`` targets in {0, 1}
    (elements equal to ``ignore_index`` do not count); :meth:`compute` gives the scores."""

    def __init__(self, num_classes: int, *, ignore_index: int | None = 255, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(3, num_classes, dtype=torch.float64, device=device)  # tp, fp, fn

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add one batch: ``pred`` ``(N, C, ...)`` bool, ``target`` ``(N, C, ...)`` float/int."""
        if pred.shape != target.shape or pred.shape[1] != self.num_classes:
            raise ValueError(f"MultilabelScores: pred {tuple(pred.shape)} and target {tuple(target.shape)} must both "
                             f"be (N, {self.num_classes}, ...)")
        valid = torch.ones_like(pred, dtype=torch.bool) if self.ignore_index is None else target != self.ignore_index
        truth = (target == 1) & valid
        pred = pred.bool() & valid
        dims = [0, *range(2, pred.dim())]
        tp = (pred & truth).sum(dims)
        fp = (pred & ~truth & valid).sum(dims)
        fn = (~pred & truth).sum(dims)
        self.counts += torch.stack([tp, fp, fn]).to(self.counts)

    def all_reduce(self) -> MultilabelScores:
        """Sum the counts of every process (a collective); a no-op without torch.distributed."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)
        return self

    def compute(self) -> dict:
        """``{"miou", "mean_dice", "iou": [per class], "dice": [per class]}`` (NaN for absent classes)."""
        tp, fp, fn = self.counts.cpu()
        union = tp + fp + fn
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        dice = torch.where(union > 0, 2 * tp / (2 * tp + fp + fn).clamp(min=1), torch.full_like(tp, math.nan))
        present = union > 0
        mean = (lambda v: float(v[present].mean()) if present.any() else math.nan)
        return {"miou": mean(iou), "mean_dice": mean(dice), "iou": iou.tolist(), "dice": dice.tolist()}
