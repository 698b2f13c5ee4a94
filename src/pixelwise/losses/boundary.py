"""Distance-map losses: the boundary loss (Kervadec et al., "Boundary loss for highly
unbalanced segmentation", MIDL 2019) and the distance-transform Hausdorff loss (Karimi &
Salcudean, "Reducing the Hausdorff Distance in Medical Image Segmentation with
Convolutional Neural Networks", IEEE TMI 2020, arXiv 2019).

Distance maps are computed from the masks inside the loss, under ``torch.no_grad()``,
with :func:`scipy.ndimage.distance_transform_edt` on the CPU: one call per image and
class, none per pixel. That copies the target (and, for the Hausdorff loss, the
thresholded prediction) to the host each step, a device sync that costs little next to
the transform itself; precomputing maps in the dataset would avoid it but ties the
dataset to the loss, so it is left out.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import LOSSES, register
from .options import LossOptions


def inside_distance(masks: np.ndarray, spacing: list[float] | None = None) -> np.ndarray:
    """Euclidean distance from every ``True`` element to the nearest ``False`` one.

    ``masks`` is a bool array ``(M, *S)``; each of the ``M`` masks is transformed on its
    own. ``False`` elements get 0; a mask with no ``False`` element gets ``inf`` on every
    element (there is nothing to be near). ``spacing`` is the element size per axis of
    ``*S`` (e.g. anisotropic voxels), 1 when ``None``. Returns float64 ``(M, *S)``.
    """
    from scipy.ndimage import (
        distance_transform_edt,  # on first use: keeps `import pixelwise` light
    )

    out = np.zeros(masks.shape, dtype=np.float64)
    for index, mask in enumerate(masks):
        if mask.all():
            out[index] = np.inf
        elif mask.any():
            out[index] = distance_transform_edt(mask, sampling=spacing)
    return out


def _has_boundary(masks: np.ndarray) -> np.ndarray:
    """``(M, *S)`` bool -> ``(M, 1, ..., 1)``: True where the mask is neither empty nor full."""
    flat = masks.reshape(masks.shape[0], -1)
    ok = flat.any(axis=1) & ~flat.all(axis=1)
    return ok.reshape(-1, *([1] * (masks.ndim - 1)))


def signed_distance(masks: np.ndarray, spacing: list[float] | None = None) -> np.ndarray:
    """Signed distance to the mask's boundary, ``(M, *S)`` bool -> float64.

    Outside the mask: ``+`` the distance to the nearest mask element; inside: ``-`` the
    distance to the nearest element outside. The boundary runs between pixels, so
    neighbours across it get ``+1`` and ``-1`` and no element is 0. An empty or full
    mask has no boundary and gets 0 everywhere.
    """
    phi = inside_distance(~masks, spacing) - inside_distance(masks, spacing)
    return np.where(_has_boundary(masks), phi, 0.0)


def boundary_distance(masks: np.ndarray, spacing: list[float] | None = None) -> np.ndarray:
    """Unsigned distance to the mask's boundary (``|signed_distance|``), 0 for an empty
    or full mask. ``(M, *S)`` bool -> float64."""
    return np.abs(signed_distance(masks, spacing))


def _apply(function, masks: Tensor, spacing: list[float] | None, like: Tensor) -> Tensor:
    """Run a NumPy distance function on ``masks`` ``(N, K, *S)`` and return a tensor
    shaped, typed and placed like ``like``."""
    flat = masks.detach().cpu().numpy().reshape(-1, *masks.shape[2:])
    result = function(flat, spacing).reshape(masks.shape)
    return torch.from_numpy(result).to(device=like.device, dtype=like.dtype)


def distance_inputs(
    logits: Tensor, target: Tensor, options: LossOptions
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(probs, truth_mask, valid)`` in the ``(N, K, *S)`` layout.

    ``probs`` are softmax (multiclass) or sigmoid probabilities; ``truth_mask`` is the
    bool membership of each labelled element in each class (soft binary/multilabel
    targets are thresholded at 0.5; ignored elements belong to no class); ``valid`` is a
    float mask, ``(N, 1, *S)`` except ``(N, C, *S)`` for multilabel.
    """
    logits, target, valid = options.prepare(logits, target)
    mode = options.mode
    if mode == "multiclass":
        probs = logits.softmax(dim=1)
        truth = F.one_hot(target, logits.shape[1]).movedim(-1, 1).bool()
        valid = valid.unsqueeze(1)
    else:
        probs = logits.sigmoid()
        truth = target >= 0.5
        if mode == "binary":
            probs, truth, valid = probs.unsqueeze(1), truth.unsqueeze(1), valid.unsqueeze(1)
    return probs, truth & valid, valid.to(probs.dtype)


def check_spacing(spacing: list[float] | None, *, owner: str) -> None:
    """Fail unless ``spacing`` is None or one positive element size per spatial axis."""
    if spacing is not None and (len(spacing) == 0 or any(not s > 0 for s in spacing)):
        raise ConfigError(
            f"{owner}: spacing must be one positive element size per spatial axis, e.g. "
            f"[3.0, 1.0, 1.0] for (D, H, W), but got {spacing!r}"
        )


def check_spacing_rank(spacing: list[float] | None, spatial: tuple[int, ...], owner: str) -> None:
    """Fail when ``spacing`` does not have one entry per axis of ``spatial``."""
    if spacing is not None and len(spacing) != len(spatial):
        raise ValueError(
            f"{owner}: spacing {spacing} has {len(spacing)} entries but the input has "
            f"{len(spatial)} spatial axes {spatial}; give one size per axis"
        )


def _chosen_weight(options: LossOptions, valid: Tensor, probs: Tensor) -> Tensor:
    """``valid`` times the 0/1 mask of the chosen classes, expanded to ``probs`` ``(N, K, *S)``."""
    chosen = options.class_selection(probs.shape[1], probs)
    return (valid * chosen.view(1, -1, *([1] * (probs.dim() - 2)))).expand_as(probs)


@register(LOSSES, "boundary")
class BoundaryLoss(nn.Module):
    """Boundary loss ``mean over elements and classes of phi_c * p_c`` (Kervadec et al.).

    ``phi_c`` is the signed distance to the boundary of class ``c`` in the ground truth
    (:func:`signed_distance`: negative inside, positive outside), ``p_c`` the predicted
    probability. Minimising it moves probability mass inside the true region and away
    from it, weighted by how far away the mass is, so it sees the shape of the region
    rather than its pixel count; this helps highly unbalanced data. The loss can be
    negative. The paper pairs it with a region loss (e.g. Dice) and ramps its weight up
    during training, and applies it to the foreground classes only (``classes=[1, ...]``);
    an image where a class is absent or fills everything has ``phi_c = 0`` there.

    Shapes: multiclass logits ``(N, C, *S)`` + integer target ``(N, *S)`` (softmax);
    binary logits ``(N, 1, *S)`` or ``(N, *S)`` + target ``(N, *S)`` (sigmoid,
    foreground only); multilabel logits and target ``(N, C, *S)`` (sigmoid per channel).
    Soft binary/multilabel targets are thresholded at 0.5 for the distance map.

    Ignored elements get weight 0 (no loss, no gradient); for the distance map they
    count as outside every class.

    Reduction ``"mean"`` divides by the number of non-ignored (element, chosen class)
    pairs; ``"sum"`` sums; ``"none"`` returns ``(N, K, *S)`` (``K`` = 1 for binary)
    with ignored elements and unchosen classes 0.

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        classes: class (channel) indices to use; ``None`` means all.
        spacing: element size per spatial axis for the distance transform (e.g.
            ``[3.0, 1.0, 1.0]`` for thick slices); ``None`` means 1.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        classes: list[int] | None = None,
        spacing: list[float] | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        owner = "BoundaryLoss"
        self.options = LossOptions(
            owner, mode=mode, ignore_index=ignore_index, reduction=reduction, classes=classes
        )
        check_spacing(spacing, owner=owner)
        self.mode, self.ignore_index = self.options.mode, self.options.ignore_index
        self.spacing = None if spacing is None else [float(s) for s in spacing]

    def extra_repr(self) -> str:
        return self.options.describe(spacing=self.spacing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the loss: a scalar, or ``(N, K, *S)`` for ``reduction="none"``."""
        probs, truth, valid = distance_inputs(logits, target, self.options)
        check_spacing_rank(self.spacing, tuple(probs.shape[2:]), self.options.owner)
        with torch.no_grad():
            phi = _apply(signed_distance, truth, self.spacing, like=probs)
        weight = _chosen_weight(self.options, valid, probs)
        return self.options.reduce(phi * probs * weight, weight)


@register(LOSSES, "hausdorff")
class HausdorffDTLoss(nn.Module):
    """Distance-transform Hausdorff loss (Karimi & Salcudean), per class ``c``::

        mean over elements of (p_c - g_c) ** 2 * (d_g ** alpha + d_p ** alpha)

    ``g_c`` is the 0/1 ground truth, ``p_c`` the predicted probability, ``d_g`` the
    distance of each element to the boundary of the ground-truth mask and ``d_p`` to the
    boundary of the predicted mask (:func:`boundary_distance`; the predicted mask is the
    argmax for multiclass, ``p > 0.5`` otherwise). Errors far from either boundary,
    which are what make the Hausdorff distance large, cost the most. A mask with no
    boundary (class absent or filling the image) contributes a distance of 0.
    ``alpha = 2`` is the paper's choice.

    Shapes, ignored elements (weight 0; outside every class in the ground-truth map;
    the predicted mask is taken as predicted everywhere), ``classes``, ``spacing`` and
    reductions as :class:`BoundaryLoss`.

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        alpha: exponent of the distances (> 0).
        classes: class (channel) indices to use; ``None`` means all.
        spacing: element size per spatial axis; ``None`` means 1.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        alpha: float = 2.0,
        classes: list[int] | None = None,
        spacing: list[float] | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        owner = "HausdorffDTLoss"
        self.options = LossOptions(
            owner, mode=mode, ignore_index=ignore_index, reduction=reduction, classes=classes
        )
        if not alpha > 0:
            raise ConfigError(f"{owner}: alpha must be > 0 but got {alpha!r}; the paper uses 2")
        check_spacing(spacing, owner=owner)
        self.mode, self.ignore_index = self.options.mode, self.options.ignore_index
        self.alpha = float(alpha)
        self.spacing = None if spacing is None else [float(s) for s in spacing]

    def extra_repr(self) -> str:
        return self.options.describe(alpha=self.alpha, spacing=self.spacing)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the loss: a scalar, or ``(N, K, *S)`` for ``reduction="none"``."""
        probs, truth, valid = distance_inputs(logits, target, self.options)
        check_spacing_rank(self.spacing, tuple(probs.shape[2:]), self.options.owner)
        with torch.no_grad():
            if self.mode == "multiclass":
                predicted = F.one_hot(probs.argmax(dim=1), probs.shape[1]).movedim(-1, 1).bool()
            else:
                predicted = probs > 0.5
            d_truth = _apply(boundary_distance, truth, self.spacing, like=probs)
            d_pred = _apply(boundary_distance, predicted, self.spacing, like=probs)
            distance_weight = d_truth**self.alpha + d_pred**self.alpha
        weight = _chosen_weight(self.options, valid, probs)
        squared_error = (probs - truth.to(probs.dtype)) ** 2
        return self.options.reduce(squared_error * distance_weight * weight, weight)
