"""Boundary and surface-distance scores for 2D label maps, averaged over images.

Per class ``c`` and image, with ``P`` / ``G`` the predicted / ground-truth masks of
``c`` and ``dP`` / ``dG`` their boundaries (mask pixels with a 4-neighbour outside the
mask or outside the image), and ``d(x, S)`` the Euclidean distance, in units of
``spacing``, from pixel centre ``x`` to the nearest pixel centre of ``S``:

- Hausdorff ``HD = max(max_{x in dP} d(x, dG), max_{y in dG} d(y, dP))``.
- ``HD95``: the same with the 95th percentile of each directed set instead of the max,
  then the max of the two (the MONAI / DeepMind ``surface-distance`` convention; medpy
  instead takes the percentile of both directions pooled).
- Average symmetric surface distance
  ``ASSD = (sum_{x in dP} d(x, dG) + sum_{y in dG} d(y, dP)) / (|dP| + |dG|)``.
- Boundary F-score (Csurka et al., "What is a good evaluation measure for semantic
  segmentation?", BMVC 2013): precision ``= |{x in dP : d(x, dG) <= t}| / |dP|``,
  recall ``= |{y in dG : d(y, dP) <= t}| / |dG|``, ``BF = 2 P R / (P + R)`` (0 if
  ``P + R = 0``); the default tolerance ``t`` is 0.75 % of the image diagonal, as in
  the paper.
- Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image
  Segmentation Evaluation", CVPR 2021): with ``G_w = {x in G : d(x, not G) <= w}``,
  the part of the mask within ``w`` of its contour (outside the image counts as not
  ``G``), ``BIoU = |G_w & P_w| / |G_w | P_w|``; default ``w`` = 2 % of the image
  diagonal, the paper's default, and never less than one pixel step (``max(spacing)``).
  The reference implementation erodes with a 3x3 square (chessboard distance); here
  the band is Euclidean, which follows the paper's text.

Empty classes (chosen so that averages stay meaningful):

- absent from both ``P`` and ``G``: every score is NaN and the image is left out of
  that class's average;
- absent from exactly one: BF = BIoU = 0, and the distances are ``empty_distance``
  (default: the image diagonal, the largest distance possible in the image, so a
  missed or hallucinated class is the worst case rather than an ``inf`` that poisons
  every mean; pass ``math.inf`` to get ``inf``). :func:`surface_scores` returns ``inf``.

Pixels whose target is ``ignore_index`` are removed from both masks before boundaries
are taken. Everything runs on NumPy arrays with ``scipy.ndimage.distance_transform_edt``
(anisotropic spacing) or OpenCV's exact ``distanceTransform`` (square pixels): four
transforms per class per image, on the bounding box of the class only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from .confusion import _as_labels, _check_classes, _reduce_sum

SCORES = ("hausdorff", "hd95", "assd", "boundary_fscore", "boundary_iou")
_DISTANCES = ("hausdorff", "hd95", "assd")


def _scipy_edt(nonzero: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    try:
        from scipy.ndimage import distance_transform_edt
    except ImportError as error:  # scipy comes with albumentations, but be explicit
        raise ImportError("surface metrics need scipy; pip install scipy") from error
    return distance_transform_edt(nonzero, sampling=spacing)


def _cv2_edt(nonzero: np.ndarray) -> np.ndarray:
    # OpenCV's exact (DIST_MASK_PRECISE) transform is several times faster than
    # SciPy's, but float32 and for square pixels only.
    return cv2.distanceTransform(
        nonzero.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE, dstType=cv2.CV_32F
    )


def _distances(nonzero: np.ndarray, at: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """float64 distances from the pixels ``at`` to the nearest zero of ``nonzero``."""
    if spacing[0] != spacing[1]:
        return _scipy_edt(nonzero, spacing)[at]
    distance = _cv2_edt(nonzero)[at].astype(np.float64)
    # Squared distances between pixel centres are integers, so rounding them undoes
    # the float32 rounding exactly while they are below 2**22 (24-bit mantissa; ~2000 px).
    squared = distance * distance
    exact = squared < 2**22
    distance[exact] = np.sqrt(np.rint(squared[exact]))
    return distance * spacing[0]


def _band(mask: np.ndarray, width: float, spacing: tuple[float, float]) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` of a pixel outside it."""
    if spacing[0] != spacing[1]:
        return mask & (_scipy_edt(mask, spacing) <= width)
    # d <= w  <=>  d**2 <= m = floor((w / s)**2) for integer d**2; thresholding float32
    # distances halfway between sqrt(m) and sqrt(m + 1) makes that exact.
    m = math.floor((width / spacing[0]) ** 2)
    return mask & (_cv2_edt(mask) <= (math.sqrt(m) + math.sqrt(m + 1)) / 2)


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Boolean ``(H, W)``: pixels with a 4-neighbour of another label or outside the image.

    For a binary mask ``labels == c`` this is ``mask & ~erode(mask)`` with a 3x3 cross
    and zero border, computed for every label at once with four shifted comparisons.
    """
    if labels.ndim != 2:
        raise ValueError(f"label map must be 2D (H, W) but got shape {labels.shape}")
    # A sentinel that no label equals, so the image border is a boundary.
    padded = np.pad(labels.astype(np.int64), 1, constant_values=np.iinfo(np.int64).min)
    centre = padded[1:-1, 1:-1]
    return (
        (centre != padded[:-2, 1:-1]) | (centre != padded[2:, 1:-1])
        | (centre != padded[1:-1, :-2]) | (centre != padded[1:-1, 2:])
    )


def _pair(
    pred: np.ndarray, gt: np.ndarray, pred_edge: np.ndarray, gt_edge: np.ndarray,
    spacing: tuple[float, float], tolerance: float, width: float, empty_distance: float,
) -> list[float]:
    """The five :data:`SCORES` for one class in one image (masks and their boundaries)."""
    has_pred, has_gt = bool(pred_edge.any()), bool(gt_edge.any())
    if not (has_pred or has_gt):
        return [math.nan] * 5
    if not (has_pred and has_gt):
        return [empty_distance] * 3 + [0.0, 0.0]
    # Every boundary pixel, hence every nearest neighbour, lies in the union's bounding
    # box; one pixel of zero padding stands for "outside the mask" in the band transform.
    rows, cols = np.nonzero(pred | gt)
    box = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    pred, gt = np.pad(pred[box], 1), np.pad(gt[box], 1)
    pred_edge, gt_edge = np.pad(pred_edge[box], 1), np.pad(gt_edge[box], 1)
    to_gt = _distances(~gt_edge, pred_edge, spacing)
    to_pred = _distances(~pred_edge, gt_edge, spacing)
    hd = max(to_gt.max(), to_pred.max())
    hd95 = max(np.percentile(to_gt, 95), np.percentile(to_pred, 95))
    assd = (to_gt.sum() + to_pred.sum()) / (to_gt.size + to_pred.size)
    precision, recall = np.mean(to_gt <= tolerance), np.mean(to_pred <= tolerance)
    bf = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    pred_band, gt_band = _band(pred, width, spacing), _band(gt, width, spacing)
    biou = np.count_nonzero(pred_band & gt_band) / np.count_nonzero(pred_band | gt_band)
    return [float(hd), float(hd95), float(assd), float(bf), float(biou)]


def _defaults(
    shape: tuple[int, int], spacing: tuple[float, float],
    tolerance: float | None, width: float | None,
) -> tuple[float, float, float]:
    diagonal = math.hypot(shape[0] * spacing[0], shape[1] * spacing[1])
    tolerance = 0.0075 * diagonal if tolerance is None else tolerance
    width = 0.02 * diagonal if width is None else width
    # At least one pixel step, so the band always holds the mask's boundary pixels and
    # a non-empty mask never has an empty band (the reference code also floors at 1).
    width = max(width, max(spacing))
    return diagonal, tolerance, width


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float]:
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 2 or not all(s > 0 and math.isfinite(s) for s in spacing):
        raise ValueError(
            f"spacing must be two positive numbers (row, column pixel size) but got {spacing}"
        )
    return spacing


def surface_scores(
    pred: np.ndarray,
    target: np.ndarray,
    *,
    spacing: Sequence[float] = (1.0, 1.0),
    tolerance: float | None = None,
    boundary_width: float | None = None,
) -> dict[str, float]:
    """Hausdorff, HD95, ASSD, boundary F-score and boundary IoU of two binary masks.

    Args:
        pred, target: boolean (or 0/1) arrays ``(H, W)``.
        spacing: pixel size ``(row, column)``; distances are in these units.
        tolerance: BF match distance; ``None`` = 0.75 % of the image diagonal.
        boundary_width: boundary-IoU band ``w``; ``None`` = 2 % of the image diagonal;
            at least ``max(spacing)``.

    Returns:
        ``{name: value}`` for the names in :data:`SCORES`; all NaN if both masks are
        empty, distances ``inf`` and BF = BIoU = 0 if exactly one is.
    """
    pred, target = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if pred.shape != target.shape or pred.ndim != 2:
        raise ValueError(
            f"pred {pred.shape} and target {target.shape} must be 2D masks of the same shape"
        )
    spacing = _check_spacing(spacing)
    _, tolerance, width = _defaults(pred.shape, spacing, tolerance, boundary_width)
    values = _pair(
        pred, target, pred & label_boundaries(pred), target & label_boundaries(target),
        spacing, tolerance, width, math.inf,
    )
    return dict(zip(SCORES, values))


class SurfaceMetrics:
    """Per-class boundary and surface-distance scores, averaged over images.

    For each score ``s`` in :data:`SCORES` and class ``c``: ``mean_i s_{i,c}`` over
    the images where ``s_{i,c}`` is defined (class in the prediction or the ground
    truth of image ``i``); the class mean is the nanmean over classes. See the module
    docstring for the definitions and the empty-class rules.

    Args:
        num_classes: ``K``; labels must lie in ``[0, K)``.
        ignore_index: target value whose pixels are removed from both masks.
        spacing: pixel size ``(row, column)``, e.g. millimetres; distances use it.
        tolerance: BF match distance in ``spacing`` units; ``None`` = 0.75 % of the
            image diagonal (Csurka et al. 2013).
        boundary_width: boundary-IoU band width; ``None`` = 2 % of the image diagonal
            (Cheng et al. 2021).
        empty_distance: distance recorded when a class is in exactly one of prediction
            and ground truth; ``None`` = that image's diagonal.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int | None = 255,
        spacing: Sequence[float] = (1.0, 1.0),
        tolerance: float | None = None,
        boundary_width: float | None = None,
        empty_distance: float | None = None,
    ) -> None:
        _check_classes(num_classes)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.spacing = _check_spacing(spacing)
        self.tolerance = tolerance
        self.boundary_width = boundary_width
        self.empty_distance = empty_distance
        # Rows: the sums of the five scores, then how many images defined the class,
        # then in how many of those exactly one of prediction and target had it.
        self._sums = torch.zeros(len(SCORES) + 2, num_classes, dtype=torch.float64)

    def reset(self) -> None:
        """Forget every image."""
        self._sums.zero_()

    def update(self, pred: Tensor | np.ndarray, target: Tensor | np.ndarray) -> None:
        """Score a batch: ``pred`` labels ``(N, H, W)`` or logits ``(N, K, H, W)``,
        ``target`` labels ``(N, H, W)`` (a single ``(H, W)`` pair is accepted too)."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if target.dim() == 2:
            pred, target = pred.unsqueeze(0), target.unsqueeze(0)
        if target.dim() != 3:
            raise ValueError(f"target must be (N, H, W) or (H, W) but got {tuple(target.shape)}")
        k = self.num_classes
        pred = _as_labels(pred, target, k)
        pred, target = pred.cpu().long().numpy(), target.cpu().long().numpy()
        ignored = target == self.ignore_index if self.ignore_index is not None else None
        bad = (target < 0) | (target >= k)
        if ignored is not None:
            bad &= ~ignored
        if bad.any() or ((pred < 0) | (pred >= k)).any():
            value = target[bad][0] if bad.any() else pred[(pred < 0) | (pred >= k)][0]
            raise ValueError(
                f"label {value} is outside [0, {k}) and is not ignore_index "
                f"({self.ignore_index}); set num_classes or ignore_index"
            )
        diagonal, tolerance, width = _defaults(
            target.shape[1:], self.spacing, self.tolerance, self.boundary_width
        )
        empty = diagonal if self.empty_distance is None else self.empty_distance
        for i in range(target.shape[0]):
            p, t = pred[i], target[i]
            if ignored is not None:
                p, t = np.where(ignored[i], -1, p), np.where(ignored[i], -1, t)
            p_edge, t_edge = label_boundaries(p), label_boundaries(t)
            present = np.union1d(np.unique(p), np.unique(t))
            for c in present[present >= 0]:
                pm, tm = p == c, t == c
                values = _pair(pm, tm, pm & p_edge, tm & t_edge, self.spacing,
                               tolerance, width, empty)
                self._sums[: len(SCORES), c] += torch.tensor(values, dtype=torch.float64)
                self._sums[len(SCORES), c] += 1
                self._sums[len(SCORES) + 1, c] += float(pm.any() != tm.any())

    def merge(self, other: SurfaceMetrics) -> SurfaceMetrics:
        """Add ``other``'s images to this one (same ``num_classes``); returns ``self``."""
        if other.num_classes != self.num_classes:
            raise ValueError(
                f"cannot merge SurfaceMetrics with num_classes={other.num_classes} into "
                f"one with num_classes={self.num_classes}"
            )
        self._sums += other._sums
        return self

    def all_reduce(self) -> SurfaceMetrics:
        """Sum the running sums over all processes (a collective); returns ``self``."""
        _reduce_sum(self._sums)
        return self

    def per_class(self, name: str) -> Tensor:
        """Mean over images of score ``name`` (one of :data:`SCORES`), ``(K,)`` float64."""
        if name not in SCORES:
            raise ValueError(f"unknown score {name!r}; choose one of {SCORES}")
        return self._sums[SCORES.index(name)] / self._sums[len(SCORES)]

    def one_sided_counts(self) -> Tensor:
        """``(K,)``: images where a class was in only one of prediction and target
        (those got ``empty_distance`` and BF = BIoU = 0)."""
        return self._sums[len(SCORES) + 1].clone()

    def compute(self) -> dict:
        """Per-class lists under each name in :data:`SCORES` and their class means
        under ``mean_<name>``."""
        out: dict = {}
        for name in SCORES:
            values = self.per_class(name)
            out[name] = values.tolist()
            out[f"mean_{name}"] = float(values.nanmean())
        return out
