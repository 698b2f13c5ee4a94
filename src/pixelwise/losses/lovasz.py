"""Lovász-softmax and Lovász hinge losses (Berman, Rannen Triki & Blaschko, "The
Lovász-Softmax Loss: A Tractable Surrogate for the Optimization of the
Intersection-Over-Union Measure in Neural Networks", CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..registry import LOSSES, register
from .options import LossOptions

CLASS_CHOICES = ("present", "all")


def lovasz_jaccard_weights(truth_sorted: Tensor) -> Tensor:
    """The Lovász extension's weights for the Jaccard loss, one per sorted element.

    ``truth_sorted`` ``(..., P)`` holds the 0/1 membership of each element in the class,
    ordered by *decreasing* error. Let ``S_i`` be the first ``i`` elements (the ``i``
    largest errors, taken as mispredicted) and ``G`` the class. The Jaccard loss of that
    mispredicted set is ``D(S_i) = |S_i| / |G ∪ S_i|``, with ``|S_i| = i`` and
    ``|G ∪ S_i| = |G| + (number of non-members among the first i)``. Returns
    ``g_i = D(S_i) - D(S_{i-1})`` (``D(∅) = 0``), so that the extension is
    ``sum_i error_sorted_i * g_i`` (the paper's eqs. 8-9).
    """
    members = truth_sorted.sum(dim=-1, keepdim=True)
    outsiders_so_far = (1.0 - truth_sorted).cumsum(dim=-1)
    count = torch.arange(
        1, truth_sorted.shape[-1] + 1, dtype=truth_sorted.dtype, device=truth_sorted.device
    )
    # |G ∪ S_i| >= 1 for every i >= 1 (either G is non-empty or S_i holds an outsider);
    # the clamp only guards against a float rounding to just below 1.
    jaccard_loss = count / (members + outsiders_so_far).clamp_min(1.0)
    return torch.diff(jaccard_loss, dim=-1, prepend=torch.zeros_like(jaccard_loss[..., :1]))


def lovasz_extension(errors: Tensor, truth: Tensor) -> Tensor:
    """Lovász extension of the Jaccard loss, ``(B, K, P)`` errors -> ``(B, K)`` losses.

    ``errors`` are non-negative, ``truth`` is the 0/1 class membership of each element.
    Elements to leave out (ignored pixels) must have error 0 and truth 0: they sort last
    and their weight multiplies an error of 0, so they change nothing.
    """
    errors_sorted, order = errors.sort(dim=-1, descending=True)
    weights = lovasz_jaccard_weights(truth.gather(-1, order))
    return (errors_sorted * weights).sum(dim=-1)


@register(LOSSES, "lovasz")
class LovaszLoss(nn.Module):
    """Lovász loss: a convex surrogate that optimises the IoU (Jaccard index) directly.

    For each class the loss is the Lovász extension of the Jaccard loss
    ``|M| / |G ∪ M|`` (``M`` the mispredicted elements, ``G`` the class) evaluated at
    the vector of per-element errors (:func:`lovasz_extension`); on 0/1 errors it *is*
    ``1 - IoU`` of the class.

    - ``multiclass`` (Lovász-softmax): logits ``(N, C, *S)``, target ``(N, *S)``
      integer; errors ``|[y == c] - softmax_c|``.
    - ``binary`` (Lovász hinge): logits ``(N, 1, *S)`` or ``(N, *S)``, target ``(N, *S)``
      in ``{0, 1}``; errors ``max(0, 1 - x * s)`` with signs ``s = 2 y - 1``, the
      foreground being the one class. A perfect prediction with margin ``|x| >= 1``
      gives exactly 0.
    - ``multilabel``: logits and target ``(N, C, *S)`` in ``{0, 1}``; a Lovász hinge per
      channel.

    The loss is the mean over the chosen classes and, with ``per_image=True``, over
    images (images with no chosen class are left out of that mean). Ignored elements
    get error 0 and no gradient; an all-ignored batch gives exactly 0.

    Sorting the errors costs ``O(P log P)`` per class, and the sort itself is where the
    gradient is piecewise linear, which is why the loss is usually combined with CE.

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        classes: ``"present"``: only classes that occur in the (non-ignored) target,
            per batch or per image (the paper's default: an absent class has no IoU to
            optimise); ``"all"``: every class, so an absent class with any predicted
            mass still costs (its Jaccard loss is 1 as soon as any error > 0); or a list
            of class indices (counted whether present or not). In binary mode the one
            class is the foreground, so ``"present"`` skips images (or batches) with an
            empty foreground; use ``"all"`` to penalise false positives there too.
        per_image: ``True``: one loss per image and class, then the mean; ``False``: one
            loss per class over the whole batch.
        from_logits: multiclass only: apply softmax first; ``False`` when the input
            holds probabilities. The hinge needs raw scores, so binary/multilabel
            require ``True``.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        classes: str | list[int] = "present",
        per_image: bool = False,
        from_logits: bool = True,
    ) -> None:
        super().__init__()
        owner = "LovaszLoss"
        self.options = LossOptions(
            owner, mode=mode, ignore_index=ignore_index, classes=classes, class_choices=CLASS_CHOICES
        )
        if not from_logits and mode != "multiclass":
            raise ConfigError(
                f"{owner}: from_logits=False is only valid for mode='multiclass'; the "
                f"Lovász hinge of mode={mode!r} works on raw logits, so pass those"
            )
        self.mode, self.ignore_index = self.options.mode, self.options.ignore_index
        self.per_image = per_image
        self.from_logits = from_logits

    def extra_repr(self) -> str:
        return self.options.describe(per_image=self.per_image)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss."""
        logits, target, valid = self.options.prepare(logits, target)
        # Bring every mode to errors and memberships of shape (N, K, P).
        if self.mode == "multiclass":
            probs = logits.softmax(dim=1) if self.from_logits else logits
            truth = F.one_hot(target, logits.shape[1]).movedim(-1, 1).to(probs.dtype)
            valid = valid.unsqueeze(1).to(probs.dtype)
            errors = (truth - probs).abs()
        else:
            hard = (target == 0) | (target == 1)
            if not bool((hard | ~valid).all()):
                value = float(target[valid & ~hard][0])
                raise DataError(
                    f"LovaszLoss: the Lovász hinge needs 0/1 targets but got {value:g}; "
                    f"threshold soft masks first or use mode='multiclass'"
                )
            if self.mode == "binary":
                logits, target, valid = logits.unsqueeze(1), target.unsqueeze(1), valid.unsqueeze(1)
            truth = target
            valid = valid.to(logits.dtype)
            errors = F.relu(1.0 - logits * (2.0 * truth - 1.0))
        num_images, num_classes = errors.shape[:2]
        errors = (errors * valid).reshape(num_images, num_classes, -1)
        truth = (truth * valid).reshape(num_images, num_classes, -1)
        valid = valid.expand(-1, num_classes, *valid.shape[2:]).reshape(num_images, num_classes, -1)
        if not self.per_image:
            # One "image" holding every element of the batch, per class.
            errors = errors.transpose(0, 1).reshape(1, num_classes, -1)
            truth = truth.transpose(0, 1).reshape(1, num_classes, -1)
            valid = valid.transpose(0, 1).reshape(1, num_classes, -1)

        losses = lovasz_extension(errors, truth)  # (B, K)
        has_labels = valid.sum(-1) > 0
        classes = self.options.classes
        if classes == "present":
            chosen = truth.sum(-1) > 0
        elif classes == "all":
            chosen = has_labels
        else:
            chosen = has_labels & self.options.class_selection(num_classes, losses).bool()
        chosen = chosen.to(losses.dtype)
        per_image = (losses * chosen).sum(-1) / chosen.sum(-1).clamp_min(1.0)
        counted = (chosen.sum(-1) > 0).to(losses.dtype)
        # Nothing chosen anywhere (e.g. all ignored): exactly 0, still in the graph.
        return (per_image * counted).sum() / counted.sum().clamp_min(1.0)
