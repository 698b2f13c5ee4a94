"""Per-image averaged IoU / Dice (see :mod:`pixelwise.metrics` for the conventions)."""

from __future__ import annotations

import torch
from torch import Tensor

from .confusion import _as_labels, _check_classes, _count_pairs, _reduce_sum


class PerImageMetrics:
    """IoU and Dice computed within each image, then averaged over images.

    For image ``i`` and class ``c`` (counts within that image, ignored pixels left out):
    ``IoU_{i,c} = TP / (GT + PR - TP)`` and ``Dice_{i,c} = 2 TP / (GT + PR)``, both NaN
    when the class is absent from that image's ground truth and prediction. Then

    - ``iou()[c]  = sum_i IoU_{i,c} / n_c``, ``n_c`` = number of images where it is
      defined (NaN if ``n_c = 0``); ``miou() = nanmean_c iou()[c]``; same for Dice;
    - ``image_miou() = mean over images of nanmean_c IoU_{i,c}``, over the images with
      at least one defined class (an image whose pixels are all ignored is skipped).

    Unlike :class:`ConfusionMatrix`, a small object weighs as much as a large one, the
    usual convention in medical imaging. The state is running sums ``(K,)``, so
    :meth:`all_reduce` is one ``all_reduce``; it stays in float64 on the CPU.

    Args:
        num_classes: ``K``; labels must lie in ``[0, K)``.
        ignore_index: target value to skip; ``None`` counts every pixel.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        _check_classes(num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # Rows: sum of IoU, sum of Dice, number of defined images; then per-image means
        # (sum of image mIoU, sum of image mDice, images with a defined class, images).
        self._sums = torch.zeros(3, num_classes, dtype=torch.float64)
        self._images = torch.zeros(4, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"PerImageMetrics(num_classes={self.num_classes}, images={self.num_images})"

    @property
    def num_images(self) -> int:
        """How many images have been counted (including fully ignored ones)."""
        return int(self._images[3])

    def reset(self) -> None:
        """Forget every image."""
        self._sums.zero_()
        self._images.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count a batch of ``N`` images: ``pred`` labels ``(N, *S)`` or logits
        ``(N, K, *S)``, ``target`` labels ``(N, *S)``; one ``bincount`` for the batch."""
        pred = _as_labels(pred, target, self.num_classes)
        counts = _count_pairs(pred, target, self.num_classes, self.ignore_index, True)
        counts = counts.to(device="cpu", dtype=torch.float64)
        tp = counts.diagonal(dim1=1, dim2=2)
        gt, pr = counts.sum(dim=2), counts.sum(dim=1)
        iou, dice = tp / (gt + pr - tp), 2 * tp / (gt + pr)
        defined = ~iou.isnan()
        self._sums[0] += iou.nan_to_num(0.0).sum(dim=0)
        self._sums[1] += dice.nan_to_num(0.0).sum(dim=0)
        self._sums[2] += defined.sum(dim=0)
        has_class = defined.any(dim=1)
        self._images[0] += iou[has_class].nanmean(dim=1).sum()
        self._images[1] += dice[has_class].nanmean(dim=1).sum()
        self._images[2] += has_class.sum()
        self._images[3] += target.shape[0]

    def merge(self, other: PerImageMetrics) -> PerImageMetrics:
        """Add ``other``'s images to this one (same ``num_classes``); returns ``self``."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge a PerImageMetrics with num_classes={other.num_classes} into "
                f"one with num_classes={self.num_classes}"
            )
        self._sums += other._sums
        self._images += other._images
        return self

    def all_reduce(self) -> PerImageMetrics:
        """Sum the running sums over all processes (a collective); returns ``self``."""
        _reduce_sum(self._sums)
        _reduce_sum(self._images)
        return self

    def iou(self) -> Tensor:
        """Per-class IoU ``(K,)`` float64, averaged over the images where it is defined."""
        return self._sums[0] / self._sums[2]

    def dice(self) -> Tensor:
        """Per-class Dice ``(K,)`` float64, averaged over the images where it is defined."""
        return self._sums[1] / self._sums[2]

    def miou(self) -> float:
        """Mean over classes of :meth:`iou` (classes never defined are left out)."""
        return float(self.iou().nanmean())

    def mean_dice(self) -> float:
        """Mean over classes of :meth:`dice`."""
        return float(self.dice().nanmean())

    def image_miou(self) -> float:
        """Mean over images of each image's mIoU."""
        return float(self._images[0] / self._images[2])

    def image_mean_dice(self) -> float:
        """Mean over images of each image's mean Dice."""
        return float(self._images[1] / self._images[2])

    def compute(self) -> dict:
        """``iou``, ``dice`` (per-class lists), ``miou``, ``mean_dice``, ``image_miou``,
        ``image_mean_dice`` and ``num_images``."""
        return {
            "iou": self.iou().tolist(),
            "dice": self.dice().tolist(),
            "miou": self.miou(),
            "mean_dice": self.mean_dice(),
            "image_miou": self.image_miou(),
            "image_mean_dice": self.image_mean_dice(),
            "num_images": self.num_images,
        }
