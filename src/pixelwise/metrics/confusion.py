"""Dataset-level scores from one confusion matrix (see :mod:`pixelwise.metrics` for the conventions)."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import DataError

# The fast counting path bins ``target * K + pred`` directly, so ignored pixels land in
# bins past ``K * K``; above this many bins the general path is cheaper in memory.
_MAX_DIRECT_BINS = 1 << 24


def _as_labels(pred: Tensor, target: Tensor, k: int) -> Tensor:
    """Check shapes and dtypes; return ``pred`` as labels ``(N, *S)``."""
    if torch.is_floating_point(target) or target.is_complex():
        raise ValueError(
            f"target must hold integer labels but got dtype {target.dtype}; convert "
            f"the masks with .long()"
        )
    logit_shape = (target.shape[0], k, *target.shape[1:]) if target.dim() else (k,)
    if torch.is_floating_point(pred):
        if tuple(pred.shape) != logit_shape:
            raise ValueError(
                f"logits must have shape {logit_shape} for target {tuple(target.shape)} and "
                f"num_classes={k} but got {tuple(pred.shape)}"
            )
        return pred.argmax(dim=1)
    if pred.shape != target.shape:
        raise ValueError(
            f"pred labels {tuple(pred.shape)} and target {tuple(target.shape)} must have "
            f"the same shape (or pass logits of shape {logit_shape})"
        )
    return pred.to(target.device)


def _count_pairs(
    pred: Tensor, target: Tensor, k: int, ignore_index: int | None, per_image: bool
) -> Tensor:
    """Confusion counts ``(G, K, K)`` int64 (``G = N`` if ``per_image`` else 1) with one
    ``bincount``. Raises on labels outside ``[0, K)`` that are not ``ignore_index``."""
    groups = target.shape[0] if per_image else 1
    if target.numel() == 0:
        return torch.zeros(groups, k, k, dtype=torch.int64, device=target.device)
    # One host sync decides whether the fast path is safe; it is exact, not heuristic.
    t_min, t_max, p_min, p_max = torch.stack(
        [v.long() for v in (*target.aminmax(), *pred.aminmax())]
    ).tolist()
    rows = max(t_max + 1, k)
    # An ignore_index inside [0, K) would be counted as a class by direct binning.
    ignore_above = ignore_index is not None and ignore_index >= k
    ignore_absent = ignore_index is None or ignore_index < 0 or ignore_above
    direct = (
        t_min >= 0 and p_min >= 0 and p_max < k and groups * rows * k <= _MAX_DIRECT_BINS
        and ignore_absent and (t_max < k or ignore_above)
    )
    if direct:
        # Ignored pixels fall in row ``ignore_index`` (>= K) and are sliced away, so
        # there is no mask, no where and no boolean indexing: one fused t*K+p, one
        # bincount. int32 halves the memory traffic when the inputs are narrow anyway.
        wide = target.dtype == torch.int64 or pred.dtype == torch.int64
        dtype = torch.int64 if wide else torch.int32
        index = torch.add(pred.to(dtype), target.to(dtype), alpha=k)
        if groups > 1:
            offsets = torch.arange(groups, device=index.device, dtype=dtype) * (rows * k)
            index = index + offsets.view(-1, *([1] * (index.dim() - 1)))
        counts = torch.bincount(index.flatten(), minlength=groups * rows * k)
        counts = counts.view(groups, rows, k)
        stray = t_max >= k and int(counts[:, k:].sum()) != int(
            counts[:, ignore_index].sum() if ignore_index <= t_max else 0
        )
        if not stray:
            return counts[:, :k].contiguous()
    # General path: any ignore_index, and the error messages. Extra bins per group
    # (ignored, bad target, bad prediction) instead of boolean indexing, which would
    # add a host sync per mask.
    target, pred = target.long(), pred.long()
    valid = torch.ones_like(target, dtype=torch.bool)
    if ignore_index is not None:
        valid = target != ignore_index
    bad_target = valid & ((target < 0) | (target >= k))
    bad_pred = valid & ((pred < 0) | (pred >= k))
    index = torch.where(valid, target * k + pred, k * k)
    index = torch.where(bad_pred, k * k + 2, index)
    index = torch.where(bad_target, k * k + 1, index)
    if groups > 1:
        offsets = torch.arange(groups, device=index.device) * (k * k + 3)
        index = index + offsets.view(-1, *([1] * (index.dim() - 1)))
    counts = torch.bincount(index.flatten(), minlength=groups * (k * k + 3))
    counts = counts.view(groups, k * k + 3)
    problems = counts[:, k * k + 1 :].sum(dim=0).tolist()
    if problems[0]:
        raise DataError(
            f"target has label {int(target[bad_target][0])} but num_classes is {k} and "
            f"ignore_index is {ignore_index}; set num_classes or ignore_index (or fix the masks)"
        )
    if problems[1]:
        raise ValueError(
            f"prediction has label {int(pred[bad_pred][0])} outside [0, {k}); the model's "
            f"num_classes and the metric's num_classes ({k}) must agree"
        )
    return counts[:, : k * k].reshape(groups, k, k)


def _check_classes(num_classes: object) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1 but got {num_classes!r}")


def _reduce_sum(tensor: Tensor) -> None:
    """In-place sum over the default process group; no-op when not distributed."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        # NCCL only reduces CUDA tensors: round-trip through the current GPU.
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        tensor.copy_(on_gpu.to(tensor.device))
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


class ConfusionMatrix:
    """A ``(K, K)`` int64 confusion matrix accumulated over a whole dataset.

    ``matrix[g, p]`` counts the pixels (voxels) whose ground truth is class ``g`` and
    whose prediction is class ``p``: rows are ground truth, columns are prediction.
    Pixels whose target equals ``ignore_index`` are not counted. Each :meth:`update`
    is one ``torch.bincount`` on the inputs' device; scores are computed from the
    dataset totals (not averaged per batch), in float64 on the CPU. This is the
    MMSegmentation ``IoUMetric`` convention (see the module docstring).

    With ``TP_c = matrix[c, c]``, ``GT_c = sum_p matrix[c, p]`` (pixels of class ``c``)
    and ``PR_c = sum_g matrix[g, c]`` (pixels predicted as ``c``), ``T = sum(GT)``:

    - ``iou()[c]          = TP_c / (GT_c + PR_c - TP_c)``
    - ``dice()[c]         = 2 TP_c / (GT_c + PR_c)``   (= F1 = 2 IoU / (1 + IoU))
    - ``precision()[c]    = TP_c / PR_c``
    - ``recall()[c] = class_accuracy()[c] = TP_c / GT_c``
    - ``fscore(beta)[c]   = (1 + b^2) TP_c / (b^2 GT_c + PR_c)``
      (= ``(1 + b^2) P R / (b^2 P + R)``; ``beta = 1`` is Dice)
    - ``pixel_accuracy()  = sum_c TP_c / T``
    - ``fwiou()           = sum_c (GT_c / T) IoU_c``, over the classes with ``GT_c > 0``
    - ``miou()``, ``mean_dice()``, ``mean_accuracy()``, ``mean_precision()``,
      ``mean_recall()``, ``mean_fscore()``: the mean of the per-class values that are
      not NaN.

    Empty classes, precisely:

    - absent from both ground truth and prediction (``GT_c = PR_c = 0``): IoU, Dice and
      F-score are NaN (0/0) and left out of the means;
    - absent from the ground truth but predicted (``GT_c = 0 < PR_c``): IoU, Dice and
      F-score are 0 and *do* count in the means (false positives are penalised); recall
      (class accuracy) is NaN and left out of its mean;
    - present but never predicted (``PR_c = 0 < GT_c``): precision is NaN, F-score 0.
      (MMSegmentation computes F from P and R, which makes it NaN whenever ``TP_c = 0``
      and drops such classes from mFscore; the count form above keeps them as 0.)
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
        _check_classes(num_classes)
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
        pred = _as_labels(pred, target, self.num_classes)
        if self._matrix.device != target.device:
            self._matrix = self._matrix.to(target.device)
        counts = _count_pairs(pred, target, self.num_classes, self.ignore_index, False)
        self._matrix += counts[0]

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
        must call it (it is a collective). With NCCL a CPU matrix goes through the GPU.
        """
        _reduce_sum(self._matrix)
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

    def precision(self) -> Tensor:
        """Per-class precision ``TP / PR`` ``(K,)`` float64; NaN for a class never predicted."""
        tp, _, pr = self._counts()
        return tp / pr

    def mean_precision(self) -> float:
        """Mean precision over the classes that were predicted."""
        return float(self.precision().nanmean())

    def recall(self) -> Tensor:
        """Per-class recall ``TP / GT`` ``(K,)``; the same as :meth:`class_accuracy`."""
        return self.class_accuracy()

    def mean_recall(self) -> float:
        """Mean recall over the classes present in the ground truth (= mean accuracy)."""
        return self.mean_accuracy()

    def fscore(self, beta: float = 1.0) -> Tensor:
        """Per-class F-beta ``(1 + b^2) TP / (b^2 GT + PR)`` ``(K,)`` float64.

        ``beta > 1`` weighs recall more, ``beta < 1`` precision; ``beta = 1`` is Dice.
        NaN only where ``GT = PR = 0``.
        """
        if not beta > 0 or math.isinf(beta):
            raise ValueError(f"beta must be a finite number > 0 but got {beta!r}")
        tp, gt, pr = self._counts()
        b2 = beta * beta
        return (1 + b2) * tp / (b2 * gt + pr)

    def mean_fscore(self, beta: float = 1.0) -> float:
        """Mean F-beta over the classes whose F-beta is not NaN."""
        return float(self.fscore(beta).nanmean())

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
        floats ``miou``, ``mean_dice``, ``pixel_accuracy``, ``mean_accuracy``, ``fwiou``.
        (Precision, recall and F-beta have their own methods.)"""
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
            lines.append(f"{name!s:<{width}}  {pct(iou):>7}  {pct(dice):>7}  {pct(acc):>7}")
        lines.append("-" * len(lines[0]))
        lines.append(
            f"mIoU {pct(scores['miou'])}  mDice {pct(scores['mean_dice'])}  "
            f"pixel acc {pct(scores['pixel_accuracy'])}  mean acc {pct(scores['mean_accuracy'])}  "
            f"fwIoU {pct(scores['fwiou'])}"
        )
        return "\n".join(lines)

