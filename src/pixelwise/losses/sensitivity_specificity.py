"""Sensitivity-specificity loss (Brosch, Yoo, Tang, Li, Traboulsee & Tam, "Deep
Convolutional Encoder Networks for Multiple Sclerosis Lesion Segmentation", MICCAI 2015)."""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import LOSSES, register
from .options import LossOptions
from .region import region_inputs, sum_dims


@register(LOSSES, "sens_spec")
class SensitivitySpecificityLoss(nn.Module):
    """Weighted sum of the mean squared error on the positives and on the negatives.

    For each class ``c``, with ``G`` the 0/1 (or soft) target and ``P`` the predicted
    probability, summed over the non-ignored elements::

        sens_c = sum((G - P)**2 * G) / sum(G)              # error on the positives
        spec_c = sum((G - P)**2 * (1 - G)) / sum(1 - G)    # error on the negatives
        loss_c = r * sens_c + (1 - r) * spec_c

    Each term is normalised by its own count, so a tiny foreground (MS lesions, the
    paper's case) is not drowned by the background; ``r`` then sets the balance, the
    paper's ``r = 0.05`` being the default. Denominators are clamped at ``eps``; both
    numerators vanish when their count is 0, so an absent class adds only its
    specificity term. The loss is the mean of ``loss_c`` over the chosen classes
    (weighted by ``class_weights``) and, with ``per_image=True``, over images.

    Shapes as :class:`~pixelwise.losses.jaccard.JaccardLoss`: multiclass logits
    ``(N, C, *S)`` + integer target ``(N, *S)`` (softmax); binary logits ``(N, 1, *S)`` or
    ``(N, *S)`` + target ``(N, *S)`` (sigmoid, foreground only); multilabel logits and
    target ``(N, C, *S)``. Ignored elements count nowhere and get no gradient.

    Args:
        mode: ``"multiclass"``, ``"binary"`` or ``"multilabel"``.
        ignore_index: target value to skip; ``None`` skips nothing.
        r: weight of the sensitivity term in ``[0, 1]``; ``1 - r`` weighs specificity.
        classes: class (channel) indices to average over; ``None`` means all.
        class_weights: one weight per class for the mean over classes.
        per_image: one loss per image and class, then the mean.
        from_logits: apply softmax/sigmoid first.
        eps: lower bound of the denominators.
    """

    def __init__(
        self,
        mode: str = "multiclass",
        *,
        ignore_index: int | None = 255,
        r: float = 0.05,
        classes: list[int] | None = None,
        class_weights: list[float] | None = None,
        per_image: bool = False,
        from_logits: bool = True,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        self.options = LossOptions(
            "SensitivitySpecificityLoss", mode=mode, ignore_index=ignore_index, classes=classes,
            class_weights=class_weights, eps=eps,
        )
        if not (isinstance(r, (int, float)) and 0 <= r <= 1):
            raise ConfigError(
                f"SensitivitySpecificityLoss: r must lie in [0, 1] but got {r!r}; the paper "
                f"uses 0.05"
            )
        self.mode, self.ignore_index = self.options.mode, self.options.ignore_index
        self.r = float(r)
        self.per_image = per_image
        self.from_logits = from_logits

    def extra_repr(self) -> str:
        return self.options.describe(r=self.r, per_image=self.per_image)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Return the scalar loss in ``[0, 1]``."""
        o = self.options
        probs, truth, valid = region_inputs(logits, target, o, from_logits=self.from_logits)
        dims = sum_dims(probs, per_image=self.per_image)
        squared_error = (truth - probs) ** 2  # 0 on ignored elements
        negatives = (1.0 - truth) * valid
        sensitivity = (squared_error * truth).sum(dims) / truth.sum(dims).clamp_min(o.eps)
        specificity = (squared_error * negatives).sum(dims) / negatives.sum(dims).clamp_min(o.eps)
        return o.class_mean(self.r * sensitivity + (1.0 - self.r) * specificity)
