"""Boundary-distance-weighted cross-entropy, in the spirit of Caliva, Iriondo, Martinez,
Majumdar & Pedoia, "Distance map loss penalty term for semantic segmentation", MIDL 2019
(and of the border weights of U-Net, Ronneberger et al., MICCAI 2015)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import LOSSES, register
from .boundary import check_spacing, check_spacing_rank, inside_distance
from .options import LossOptions


def distance_to_other_label(
    label_sets: Tensor, spacing: list[float] | None = None
) -> Tensor:
    """Distance from every labelled element to the nearest element *not* of its label.

    ``label_sets`` is bool ``(B, L, *S)``: ``L`` disjoint masks per item (the one-hot
    labels). An element outside every mask (ignored) counts as "another label" for its
    neighbours and gets distance 0 itself. An item made of one label only gets ``inf``.
    Computed on the CPU with SciPy (one transform per item and label). Returns float64
    ``(B, *S)`` on the CPU.
    """
    masks = label_sets.detach().cpu().numpy()
    flat = masks.reshape(-1, *masks.shape[2:])
    inside = inside_distance(flat, spacing).reshape(masks.shape)
    # The sets are disjoint, so at most one term per element is non-zero: no inf + inf
    # and no 0 * inf.
    return torch.from_numpy(np.sum(inside, axis=1))


@register(LOSSES, "distance_ce")
class DistanceWeightedCrossEntropyLoss(nn.Module):
    """Cross-entropy whose per-pixel weight grows near the ground truth's boundaries::

        w = 1 + boundary_weight * exp(-d / sigma)

    ``d`` is the Euclidean distance (in elements, scaled by ``spacing``) from the pixel
    to the nearest pixel with a *different* ground-truth label, so pixels touching a
    boundary have ``d = 1`` (``w = 1 + boundary_weight * exp(-1 / sigma)``) and the
    weight decays to 1 over a few ``sigma``. Ignored pixels count as a different label
    (in Pascal VOC the ignore band *is* the object outline); an image holding one label
    only has no boundary and weight 1 everywhere. Caliva et al. derive the weights from
    distance maps too; this exact exponential form is our choice, close to U-Net's
    border weights.

    The loss is the weighted mean ``sum(w * c * ce) / sum(w * c)`` over non-ignored
    pixels, ``c`` the class weight of the true class (1 without ``class_weights``), so
    ``boundary_weight=0`` is plain :class:`~pixelwise.losses.ce.CrossEntropyLoss`.
    ``"sum"`` is ``sum(w * c * ce)``; ``"none"`` returns ``w * c * ce`` per element
    with ignored elements 0. The weights are computed under ``torch.no_grad()`` on the
    CPU with :func:`scipy.ndimage.distance_transform_edt` (one call per image and
    label), which copies the target to the host each step.

    Shapes: multiclass logits ``(N, C, *S)`` + integer target ``(N, *S)`` (softmax CE;
    labels are the classes); binary logits ``(N, 1, *S)`` or ``(N, *S)`` + target
    ``(N, *S)`` (sigmoid BCE; labels are foreground/background, soft targets thresholded
    at 0.5); multilabel logits and target ``(N, C, *S)`` (BCE per channel, each channel
    with its own foreground/background boundary).

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        boundary_weight: ``lambda`` above, >= 0: the extra weight at the boundary.
        sigma: decay length of the extra weight in elements, > 0.
        class_weights: multiclass only, one weight per class.
        spacing: element size per spatial axis; ``None`` means 1.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        boundary_weight: float = 5.0,
        sigma: float = 3.0,
        class_weights: list[float] | None = None,
        spacing: list[float] | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        owner = "DistanceWeightedCrossEntropyLoss"
        self.options = LossOptions(
            owner, mode=mode, ignore_index=ignore_index, reduction=reduction,
            class_weights=class_weights, weights_for=("multiclass",),
        )
        if not (boundary_weight >= 0 and sigma > 0 and math.isfinite(sigma)):
            raise ConfigError(
                f"{owner}: need boundary_weight >= 0 and a finite sigma > 0 but got "
                f"{boundary_weight=}, {sigma=}"
            )
        check_spacing(spacing, owner=owner)
        self.mode, self.ignore_index = self.options.mode, self.options.ignore_index
        self.boundary_weight = float(boundary_weight)
        self.sigma = float(sigma)
        self.spacing = None if spacing is None else [float(s) for s in spacing]
        self.register_buffer("class_weights", self.options.weight_buffer(), persistent=False)

    def extra_repr(self) -> str:
        return self.options.describe(boundary_weight=self.boundary_weight, sigma=self.sigma)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the loss: a scalar, or per element for ``reduction="none"``."""
        logits, target, valid = self.options.prepare(logits, target)
        check_spacing_rank(self.spacing, tuple(logits.shape[2 - (self.mode == "binary"):]), self.options.owner)
        if self.mode == "multiclass":
            loss = F.cross_entropy(logits, target, reduction="none")
            class_weight = torch.ones_like(loss)
            if self.class_weights is not None:
                self.options.check_num_classes(logits.shape[1])
                class_weight = self.class_weights.to(logits.dtype)[target]
        else:
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            class_weight = torch.ones_like(loss)

        with torch.no_grad():
            if self.mode == "multiclass":
                sets = F.one_hot(target, logits.shape[1]).movedim(-1, 1).bool()
                sets = sets & valid.unsqueeze(1)
                distance = distance_to_other_label(sets, self.spacing)
            else:
                foreground = (target >= 0.5) & valid
                background = (target < 0.5) & valid
                # (items, 2 labels, *S) with one item per image (binary) or per image
                # and channel (multilabel).
                items = foreground.shape[: 1 + (self.mode == "multilabel")]
                spatial = foreground.shape[len(items):]
                sets = torch.stack([foreground, background], dim=len(items))
                sets = sets.reshape(-1, 2, *spatial)
                distance = distance_to_other_label(sets, self.spacing).reshape(foreground.shape)
            distance = distance.to(device=loss.device, dtype=loss.dtype)
            boundary = 1.0 + self.boundary_weight * torch.exp(-distance / self.sigma)
            weight = boundary * class_weight * valid

        return self.options.reduce(loss * weight, weight)
