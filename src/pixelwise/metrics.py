"""Dataset-level segmentation scores from one confusion matrix.

IoU / Jaccard and mean IoU as in the PASCAL VOC challenge (Everingham et al., IJCV
2010); pixel accuracy, mean accuracy and frequency-weighted IoU as defined in FCN
(Long et al., "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import DataError


class ConfusionMatrix:
    """A ``(K, K)`` int64 confusion matrix accumulated over a whole dataset.

    ``matrix[g, p]`` counts the pixels (voxels) whose ground truth is class ``g`` and
    whose prediction is class ``p``: rows are ground truth, columns are prediction.
    Pixels whose target equals ``ignore_index`` are not counted. Each :meth:`update`
    is one ``torch.bincount`` on the inputs' device; scores are computed from the
    dataset totals (not averaged per batch), in float64 on the CPU.

    With ``TP_c = matrix[c, c]``, ``GT_c = sum_p matrix[c, p]`` (pixels of class ``c``)
    and ``PR_c = sum_g matrix[g, c]`` (pixels predicted as ``c``), ``T = sum(GT)``:

    - ``iou()[c]          = TP_c / (GT_c + PR_c - TP_c)``
    - ``dice()[c]         = 2 TP_c / (GT_c + PR_c)``   (= F1 = 2 IoU / (1 + IoU))
    - ``class_accuracy()[c] = TP_c / GT_c``            (recall)
    - ``pixel_accuracy()  = sum_c TP_c / T``
    - ``fwiou()           = sum_c (GT_c / T) IoU_c``, over the classes with ``GT_c > 0``
    - ``miou()``, ``mean_dice()``, ``mean_accuracy()``: the mean of the per-class values
      that are not NaN.

    Empty classes, precisely:

    - absent from both ground truth and prediction (``GT_c = PR_c = 0``): IoU and Dice
      are NaN (0/0) and left out of mIoU and mean Dice;
    - absent from the ground truth but predicted (``GT_c = 0 < PR_c``): IoU and Dice are
      0 and *do* count in the means (false positives are penalised); class accuracy is
      NaN (0/0) and left out of the mean accuracy;
    - every score is NaN when nothing has been counted yet.

    Args:
        num_classes: ``K``; labels must lie in ``[0, K)``.
        ignore_index: target value to skip; ``None`` counts every pixel.
        device: where to keep the matrix at first; it moves to the inputs' device on
            :meth:`update`.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = 255,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an int >= 1 but got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"pixels={int(self._matrix.sum())})"
        )

    @property
    def matrix(self) -> Tensor:
        """The ``(K, K)`` int64 counts, rows ground truth, columns prediction."""
        return self._matrix

    def reset(self) -> None:
        """Set every count to zero (e.g. at the start of an evaluation epoch)."""
        self._matrix.zero_()

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Count one batch.

        Args:
            pred: labels ``(N, *S)`` of an integer dtype, or logits / probabilities
                ``(N, K, *S)`` of a float dtype (reduced by argmax over dim 1).
            target: ground-truth labels ``(N, *S)``, integer; ``*S`` is ``(H, W)`` or
                ``(D, H, W)``.

        Raises:
            ValueError: shapes that do not match, or a float target.
            DataError: a target label outside ``[0, K)`` that is not ``ignore_index``.
        """
        k = self.num_classes
        if torch.is_floating_point(target) or target.is_complex():
            raise ValueError(
                f"target must hold integer labels but got dtype {target.dtype}; convert "
                f"the masks with .long()"
            )
        if torch.is_floating_point(pred):
            expected = (target.shape[0], k, *target.shape[1:])
            if tuple(pred.shape) != expected:
                raise ValueError(
                    f"logits must have shape {expected} for target {tuple(target.shape)} and "
                    f"num_classes={k} but got {tuple(pred.shape)}"
                )
            pred = pred.argmax(dim=1)
        elif pred.shape != target.shape:
            logit_shape = (target.shape[0], k, *target.shape[1:])
            raise ValueError(
                f"pred labels {tuple(pred.shape)} and target {tuple(target.shape)} must have "
                f"the same shape (or pass logits of shape {logit_shape})"
            )
        if self._matrix.device != target.device:
            self._matrix = self._matrix.to(target.device)
        # int64 before arithmetic: uint8 masks would wrap around in target * k.
        target = target.long()
        pred = pred.to(device=target.device, dtype=torch.long)

        valid = torch.ones_like(target, dtype=torch.bool)
        if self.ignore_index is not None:
            valid = target != self.ignore_index
        bad_target = valid & ((target < 0) | (target >= k))
        bad_pred = valid & ((pred < 0) | (pred >= k))
        # One bincount with three extra bins (ignored, bad target, bad prediction)
        # instead of boolean indexing, which would add a host sync per mask.
        index = target * k + pred
        index = torch.where(valid, index, k * k)
        index = torch.where(bad_pred, k * k + 2, index)
        index = torch.where(bad_target, k * k + 1, index)
        counts = torch.bincount(index.flatten(), minlength=k * k + 3)
        problems = counts[k * k + 1 :].tolist()  # the one host sync of an update
        if problems[0]:
            value = int(target[bad_target][0])
            raise DataError(
                f"target has label {value} but num_classes is {k} and ignore_index is "
                f"{self.ignore_index}; set num_classes or ignore_index (or fix the masks)"
            )
        if problems[1]:
            value = int(pred[bad_pred][0])
            raise ValueError(
                f"prediction has label {value} outside [0, {k}); the model's num_classes "
                f"and the metric's num_classes ({k}) must agree"
            )
        self._matrix += counts[: k * k].view(k, k)

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts to this one (same ``num_classes``); returns ``self``."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge a ConfusionMatrix with num_classes={other.num_classes} into "
                f"one with num_classes={self.num_classes}"
            )
        self._matrix += other.matrix.to(self._matrix.device)
        return self

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the counts over all processes of the default group; returns ``self``.

        A no-op unless ``torch.distributed`` is available and initialised. Every process
        must call it (it is a collective). With the NCCL backend the matrix must be on
        the GPU, which it is after an update with GPU tensors.
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self._matrix, op=dist.ReduceOp.SUM)
        return self

    # Scores. float64 on the CPU: exact up to 2**53 pixels, and MPS has no float64.
    def _counts(self) -> tuple[Tensor, Tensor, Tensor]:
        m = self._matrix.to(device="cpu", dtype=torch.float64)
        return m.diagonal(), m.sum(dim=1), m.sum(dim=0)

    def iou(self) -> Tensor:
        """Per-class IoU ``(K,)`` float64; NaN for a class absent from GT and prediction."""
        tp, gt, pr = self._counts()
        return tp / (gt + pr - tp)

    def miou(self) -> float:
        """Mean IoU over the classes whose IoU is not NaN."""
        return float(self.iou().nanmean())

    def dice(self) -> Tensor:
        """Per-class Dice / F1 ``(K,)`` float64; NaN where IoU is NaN."""
        tp, gt, pr = self._counts()
        return 2 * tp / (gt + pr)

    def mean_dice(self) -> float:
        """Mean Dice over the classes whose Dice is not NaN."""
        return float(self.dice().nanmean())

    def pixel_accuracy(self) -> float:
        """Fraction of counted pixels predicted correctly."""
        tp, gt, _ = self._counts()
        return float(tp.sum() / gt.sum())

    def class_accuracy(self) -> Tensor:
        """Per-class accuracy (recall) ``(K,)`` float64; NaN for a class absent from GT."""
        tp, gt, _ = self._counts()
        return tp / gt

    def mean_accuracy(self) -> float:
        """Mean class accuracy over the classes present in the ground truth."""
        return float(self.class_accuracy().nanmean())

    def fwiou(self) -> float:
        """Frequency-weighted IoU: ``sum_c (GT_c / T) IoU_c``."""
        tp, gt, pr = self._counts()
        present = gt > 0
        iou = tp[present] / (gt + pr - tp)[present]
        return float((gt[present] / gt.sum() * iou).sum()) if bool(present.any()) else math.nan

    def compute(self) -> dict:
        """All scores: per-class lists ``iou``, ``dice``, ``class_accuracy`` and the
        floats ``miou``, ``mean_dice``, ``pixel_accuracy``, ``mean_accuracy``, ``fwiou``."""
        return {
            "iou": self.iou().tolist(),
            "dice": self.dice().tolist(),
            "class_accuracy": self.class_accuracy().tolist(),
            "miou": self.miou(),
            "mean_dice": self.mean_dice(),
            "pixel_accuracy": self.pixel_accuracy(),
            "mean_accuracy": self.mean_accuracy(),
            "fwiou": self.fwiou(),
        }

    def format_table(self, class_names: list[str] | None = None) -> str:
        """A per-class text table (IoU, Dice, Acc in percent; ``-`` for NaN) and a
        summary line, for logs and the command line."""
        if class_names is None:
            class_names = [str(c) for c in range(self.num_classes)]
        elif len(class_names) != self.num_classes:
            raise ValueError(
                f"class_names has {len(class_names)} names but num_classes is "
                f"{self.num_classes}; give one name per class"
            )
        scores = self.compute()

        def pct(value: float) -> str:
            return "-" if math.isnan(value) else f"{100 * value:.2f}"

        width = max(5, *(len(str(name)) for name in class_names))
        lines = [f"{'class':<{width}}  {'IoU':>7}  {'Dice':>7}  {'Acc':>7}"]
        lines.append("-" * len(lines[0]))
        for name, iou, dice, acc in zip(
            class_names, scores["iou"], scores["dice"], scores["class_accuracy"]
        ):
            lines.append(f"{str(name):<{width}}  {pct(iou):>7}  {pct(dice):>7}  {pct(acc):>7}")
        lines.append("-" * len(lines[0]))
        lines.append(
            f"mIoU {pct(scores['miou'])}  mDice {pct(scores['mean_dice'])}  "
            f"pixel acc {pct(scores['pixel_accuracy'])}  mean acc {pct(scores['mean_accuracy'])}  "
            f"fwIoU {pct(scores['fwiou'])}"
        )
        return "\n".join(lines)
