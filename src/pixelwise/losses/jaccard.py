"""Soft IoU (Jaccard) loss (Rahman & Wang, "Optimizing Intersection-Over-Union in Deep
Neural Networks for Image Segmentation", ISVC 2016).

This module also holds the three small steps that every *region* loss (IoU, Tversky,
sensitivity-specificity) shares: :func:`region_inputs` (probabilities and targets in one
``(N, K, *S)`` layout with ignored elements zeroed), :func:`check_class_options` and
:func:`class_mean` (which classes count, and with which weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import LOSSES, register
from ._targets import check_mode, prepare


def region_inputs(
    logits: Tensor,
    target: Tensor,
    *,
    mode: str,
    ignore_index: int | None,
    from_logits: bool,
    owner: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(probs, truth, valid)``, each broadcastable to ``(N, K, *S)``.

    ``K`` is ``C`` for multiclass (softmax, one-hot target) and multilabel (sigmoid), and
    1 for binary (sigmoid of the foreground). ``probs`` and ``truth`` are zero where the
    target is ignored, so sums over them count only labelled elements and ignored
    elements get no gradient. ``valid`` is a float mask, ``(N, 1, *S)`` for multiclass
    and binary and ``(N, C, *S)`` for multilabel.
    """
    logits, target, valid = prepare(
        logits, target, mode=mode, ignore_index=ignore_index, owner=owner
    )
    if mode == "multiclass":
        probs = logits.softmax(dim=1) if from_logits else logits
        truth = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
        valid = valid.unsqueeze(1)
    else:
        probs = logits.sigmoid() if from_logits else logits
        truth = target
        if mode == "binary":
            probs, truth, valid = probs.unsqueeze(1), truth.unsqueeze(1), valid.unsqueeze(1)
    valid = valid.to(probs.dtype)
    return probs * valid, truth * valid, valid


def sum_dims(probs: Tensor, *, per_image: bool) -> tuple[int, ...]:
    """Dims of ``(N, K, *S)`` to sum over: ``*S`` per image, or ``N`` and ``*S`` per batch."""
    spatial = tuple(range(2, probs.dim()))
    return spatial if per_image else (0, *spatial)


def check_class_options(
    classes: list[int] | None, class_weights: list[float] | None, *, mode: str, owner: str
) -> None:
    """Fail early on a bad ``classes`` / ``class_weights`` pair (see :func:`class_mean`)."""
    if classes is not None:
        if len(classes) == 0 or any(
            isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in classes
        ):
            raise ConfigError(
                f"{owner}: classes must be a non-empty list of class indices >= 0 but got "
                f"{classes!r}; use None for all classes"
            )
        if mode == "binary" and list(classes) != [0]:
            raise ConfigError(
                f"{owner}: mode='binary' has the single class 0 but classes is {classes!r}; "
                f"use classes=None"
            )
    if class_weights is not None:
        if mode == "binary":
            raise ConfigError(
                f"{owner}: class_weights weigh the classes of a multiclass/multilabel loss "
                f"but mode is 'binary' (one class); drop class_weights"
            )
        if len(class_weights) == 0 or any(not w >= 0 for w in class_weights):
            raise ConfigError(
                f"{owner}: class_weights must be a non-empty list of numbers >= 0 but got "
                f"{class_weights!r}"
            )


def class_mean(
    values: Tensor,
    *,
    classes: list[int] | None,
    class_weights: list[float] | None,
    owner: str,
) -> Tensor:
    """Weighted mean over the last (class) dim of ``values`` ``(..., K)``, then the plain
    mean over the leading (image) dims.

    Only ``classes`` count (all when ``None``); class ``k`` has weight
    ``class_weights[k]`` (1 when ``None``).
    """
    num_classes = values.shape[-1]
    if classes is not None and max(classes) >= num_classes:
        raise ValueError(
            f"{owner}: classes {classes} includes {max(classes)} but the logits have "
            f"{num_classes} classes; fix classes or num_classes"
        )
    if class_weights is not None and len(class_weights) != num_classes:
        raise ValueError(
            f"{owner}: class_weights has {len(class_weights)} entries but the logits have "
            f"{num_classes} classes; give one weight per class"
        )
    weights = (
        torch.ones(num_classes, dtype=values.dtype, device=values.device)
        if class_weights is None
        else torch.tensor(class_weights, dtype=values.dtype, device=values.device)
    )
    if classes is not None:
        chosen = torch.zeros_like(weights)
        chosen[list(classes)] = 1.0
        weights = weights * chosen
    if not bool(weights.sum() > 0):
        raise ValueError(
            f"{owner}: class_weights {class_weights} are 0 on every chosen class {classes}; "
            f"give at least one chosen class a positive weight"
        )
    return ((values * weights).sum(-1) / weights.sum()).mean()


@register(LOSSES, "iou")
class JaccardLoss(nn.Module):
    """Soft IoU (Jaccard) loss, ``1 - mean_c IoU_c``, on probabilities.

    For each class ``c``, with ``P`` the predicted probabilities and ``G`` the one-hot
    (or 0/1, or soft) target, summed over the non-ignored elements::

        I_c = sum(P_c * G_c)
        U_c = sum(P_c) + sum(G_c) - I_c
        IoU_c = (I_c + smooth) / max(U_c + smooth, eps)

    Rahman & Wang use ``1 - I / U`` for one foreground class; the class mean,
    ``smooth`` and ``eps`` are the usual generalisation. On hard 0/1 probabilities with
    ``smooth=0`` the loss is ``1 - mIoU`` exactly.

    Shapes (``*S`` is ``(H, W)`` or ``(D, H, W)``): multiclass logits ``(N, C, *S)`` with
    an integer target ``(N, *S)`` (softmax); binary logits ``(N, 1, *S)`` or ``(N, *S)``
    with a target ``(N, *S)`` in ``[0, 1]`` (sigmoid, foreground only); multilabel logits
    and target ``(N, C, *S)`` (sigmoid per channel). Ignored elements count nowhere and
    get no gradient. An absent class with ``smooth > 0`` scores
    ``smooth / (sum(P_c) + smooth)``: it still pushes its false positives down.

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        smooth: added to numerator and denominator.
        classes: class (channel) indices to average over; ``None`` means all.
        class_weights: one weight per class for the mean over classes (multiclass and
            multilabel); ``None`` weighs all equally.
        per_image: one IoU per image and class, then the mean, instead of one per class
            over the whole batch.
        from_logits: apply softmax/sigmoid first; ``False`` when the input holds
            probabilities.
        eps: lower bound of the denominator.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        smooth: float = 1.0,
        classes: list[int] | None = None,
        class_weights: list[float] | None = None,
        per_image: bool = False,
        from_logits: bool = True,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        owner = "JaccardLoss"
        check_mode(mode, owner=owner)
        if not (smooth >= 0 and eps > 0):
            raise ConfigError(f"{owner}: need smooth >= 0 and eps > 0 but got {smooth=}, {eps=}")
        check_class_options(classes, class_weights, mode=mode, owner=owner)
        self.mode = mode
        self.ignore_index = ignore_index
        self.smooth = float(smooth)
        self.classes = None if classes is None else list(classes)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.per_image = per_image
        self.from_logits = from_logits
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, ignore_index={self.ignore_index}, smooth={self.smooth}, "
            f"classes={self.classes}, per_image={self.per_image}"
        )

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss in ``[0, 1]``."""
        probs, truth, _ = region_inputs(
            logits, target, mode=self.mode, ignore_index=self.ignore_index,
            from_logits=self.from_logits, owner="JaccardLoss",
        )
        dims = sum_dims(probs, per_image=self.per_image)
        intersection = (probs * truth).sum(dims)
        union = probs.sum(dims) + truth.sum(dims) - intersection
        iou = (intersection + self.smooth) / (union + self.smooth).clamp_min(self.eps)
        return 1.0 - class_mean(
            iou, classes=self.classes, class_weights=self.class_weights, owner="JaccardLoss"
        )
