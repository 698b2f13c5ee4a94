"""The options every loss shares, checked once: :class:`LossOptions`.

Each registered loss takes the same keyword-only options where they apply (``mode``,
``ignore_index``, ``reduction``, ``classes``, ``class_weights``, ``smooth``, ``eps``) and
hands them to one :class:`LossOptions`, which refuses a bad value at construction with a
message that names the loss, the value and the fix. The checks that need the logits (a
class index or a weight list longer than the number of classes) live here too, so each
message exists once. Losses keep their own options (``alpha``, ``gamma``, ...) to
themselves.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..errors import ConfigError
from ._targets import MODES, check_mode, prepare

REDUCTIONS = ("mean", "sum", "none")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class LossOptions:
    """The checked, normalised shared options of one loss.

    Fields left at ``None`` (``reduction``, ``smooth``, ``eps``) are options the loss does
    not have. ``weights_for`` and ``class_choices`` say what the loss accepts rather than
    what the user chose: the modes in which ``class_weights`` mean something, and the
    names ``classes`` may take besides a list (Lovász's ``"present"`` / ``"all"``).
    ``weights_hint`` is the fix offered when ``class_weights`` is given in another mode.

    Raises :class:`~pixelwise.errors.ConfigError` for a bad value.
    """

    owner: str
    mode: str = "multiclass"
    ignore_index: int | None = 255
    reduction: str | None = None
    classes: tuple[int, ...] | str | None = None
    class_weights: tuple[float, ...] | None = None
    smooth: float | None = None
    eps: float | None = None
    weights_for: tuple[str, ...] = ("multiclass", "multilabel")
    weights_hint: str = "drop class_weights"
    class_choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        owner = self.owner
        check_mode(self.mode, owner=owner)
        if self.ignore_index is not None and (
            isinstance(self.ignore_index, bool)
            or not isinstance(self.ignore_index, numbers.Integral)
        ):
            raise ConfigError(
                f"{owner}: ignore_index must be an int or None but got {self.ignore_index!r}"
            )
        if self.reduction is not None and self.reduction not in REDUCTIONS:
            raise ConfigError(
                f"{owner}: reduction {self.reduction!r} is not one of {', '.join(REDUCTIONS)}"
            )
        object.__setattr__(self, "classes", self._checked_classes())
        object.__setattr__(self, "class_weights", self._checked_weights())
        if self.smooth is not None and not (_is_number(self.smooth) and self.smooth >= 0):
            raise ConfigError(f"{owner}: smooth must be a number >= 0 but got {self.smooth!r}")
        if self.eps is not None and not (_is_number(self.eps) and self.eps > 0):
            raise ConfigError(
                f"{owner}: eps must be a number > 0 but got {self.eps!r}; e.g. eps=1e-7"
            )
        if self.ignore_index is not None:
            object.__setattr__(self, "ignore_index", int(self.ignore_index))
        for name in ("smooth", "eps"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))

    def _checked_classes(self) -> tuple[int, ...] | str | None:
        classes, owner = self.classes, self.owner
        if classes is None:
            return None
        if isinstance(classes, str):
            if classes in self.class_choices:
                return classes
            if self.class_choices:
                raise ConfigError(
                    f"{owner}: classes {classes!r} is not one of "
                    f"{', '.join(self.class_choices)} or a list of class indices"
                )
        choices = "".join(f"{c!r}, " for c in self.class_choices)
        if (
            isinstance(classes, str)
            or not isinstance(classes, (list, tuple))
            or len(classes) == 0
            or any(isinstance(c, bool) or not isinstance(c, numbers.Integral) or c < 0 for c in classes)
        ):
            fallback = "" if self.class_choices else "; use None for all classes"
            raise ConfigError(
                f"{owner}: classes must be {choices}a non-empty list of class indices >= 0 "
                f"but got {classes!r}{fallback}"
            )
        if self.mode == "binary" and list(classes) != [0]:
            raise ConfigError(
                f"{owner}: mode='binary' has the single class 0 but classes is {classes!r}; "
                f"use classes=None"
            )
        return tuple(int(c) for c in classes)

    def _checked_weights(self) -> tuple[float, ...] | None:
        weights, owner = self.class_weights, self.owner
        if weights is None:
            return None
        if self.mode not in self.weights_for:
            modes = " or ".join(repr(m) for m in self.weights_for)
            raise ConfigError(
                f"{owner}: class_weights is for mode={modes} but mode is {self.mode!r}; "
                f"{self.weights_hint}"
            )
        if (
            isinstance(weights, str)
            or not isinstance(weights, (list, tuple))
            or len(weights) == 0
            or any(not (_is_number(w) and math.isfinite(w) and w >= 0) for w in weights)
        ):
            raise ConfigError(
                f"{owner}: class_weights must be a non-empty list of numbers >= 0 (one per "
                f"class) but got {weights!r}"
            )
        return tuple(float(w) for w in weights)

    def describe(self, **extra) -> str:
        """``extra_repr`` text: the options this loss has, then ``extra``."""
        skip = {"owner", "weights_for", "weights_hint", "class_choices"}
        shown = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in skip
            and (getattr(self, f.name) is not None or f.name == "ignore_index")
        }
        shown.update(extra)
        return ", ".join(f"{name}={value!r}" for name, value in shown.items())

    # ------------------------------------------------------------ at forward time

    def prepare(self, logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:func:`~pixelwise.losses._targets.prepare` with this loss's mode and name."""
        return prepare(
            logits, target, mode=self.mode, ignore_index=self.ignore_index, owner=self.owner
        )

    def check_num_classes(self, num_classes: int) -> None:
        """Fail when ``classes`` or ``class_weights`` do not fit ``num_classes`` logits."""
        if isinstance(self.classes, tuple) and max(self.classes) >= num_classes:
            raise ValueError(
                f"{self.owner}: classes {list(self.classes)} includes {max(self.classes)} but "
                f"the logits have {num_classes} classes; fix classes or num_classes"
            )
        if self.class_weights is not None and len(self.class_weights) != num_classes:
            raise ValueError(
                f"{self.owner}: class_weights has {len(self.class_weights)} entries but the "
                f"logits have {num_classes} classes; give one weight per class"
            )

    def weight_buffer(self) -> Tensor | None:
        """``class_weights`` as a float32 ``(K,)`` tensor (or None) for ``register_buffer``.

        Register it with ``persistent=False``: buffers follow ``.to(device)`` but these
        never enter a checkpoint, the constructor arguments are the saved config.
        """
        return None if self.class_weights is None else torch.tensor(self.class_weights, dtype=torch.float32)

    def weight_tensor(self, like: Tensor) -> Tensor | None:
        """``class_weights`` as a ``(K,)`` tensor in ``like``'s dtype and device, or None."""
        if self.class_weights is None:
            return None
        return torch.tensor(self.class_weights, dtype=like.dtype, device=like.device)

    def class_selection(self, num_classes: int, like: Tensor) -> Tensor:
        """``(K,)`` 0/1 mask of the chosen classes (all when ``classes`` is not a list)."""
        self.check_num_classes(num_classes)
        chosen = torch.ones(num_classes, dtype=like.dtype, device=like.device)
        if isinstance(self.classes, tuple):
            chosen = torch.zeros_like(chosen)
            chosen[list(self.classes)] = 1.0
        return chosen

    def class_mean(self, values: Tensor) -> Tensor:
        """Weighted mean over the last (class) dim of ``values`` ``(..., K)``, then the
        plain mean over the leading (image) dims.

        Only ``classes`` count (all when ``None``); class ``k`` has weight
        ``class_weights[k]`` (1 when ``None``).
        """
        weights = self.class_selection(values.shape[-1], values)
        if self.class_weights is not None:
            weights = weights * self.weight_tensor(values)
        if not bool(weights.sum() > 0):
            raise ValueError(
                f"{self.owner}: class_weights {list(self.class_weights or ())} are 0 on "
                f"every chosen class {self.classes}; give at least one chosen class a "
                f"positive weight"
            )
        return ((values * weights).sum(-1) / weights.sum()).mean()

    def reduce(self, per_element: Tensor, weight: Tensor) -> Tensor:
        """Apply ``reduction``: ``"none"`` returns ``per_element``, ``"sum"`` its sum,
        ``"mean"`` its sum divided by ``weight.sum()`` (the count, or weighted count, of
        the elements that take part).

        When nothing takes part the sum is exactly 0; it is divided by 1, so the loss
        stays 0 and in the autograd graph instead of 0/0 = NaN.
        """
        if self.reduction == "none":
            return per_element
        total = per_element.sum()
        if self.reduction == "sum":
            return total
        denominator = weight.sum().to(total.dtype)
        # where() on the denominator, which needs no gradient, keeps NaN out of the
        # backward pass that where(..., total / 0, ...) would leak.
        return total / torch.where(denominator > 0, denominator, torch.ones_like(denominator))


__all__ = ["MODES", "REDUCTIONS", "LossOptions"]
