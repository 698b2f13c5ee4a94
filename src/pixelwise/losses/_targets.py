"""Shared input checks for the losses: one place that knows the three target layouts.

Every loss takes ``mode`` and ``ignore_index`` (see DESIGN.md). The layouts are:

- ``multiclass``: logits ``(N, C, *S)``, target ``(N, *S)`` integer in ``[0, C)``;
- ``binary``: logits ``(N, 1, *S)`` or ``(N, *S)``, target ``(N, *S)`` in ``[0, 1]``;
- ``multilabel``: logits ``(N, C, *S)``, target ``(N, C, *S)`` in ``[0, 1]``.

``*S`` is ``(H, W)`` for images and ``(D, H, W)`` for volumes. Target elements equal to
``ignore_index`` are masked out; ``ignore_index=None`` masks nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError, DataError

MODES = ("binary", "multiclass", "multilabel")


def check_mode(mode: str, *, owner: str) -> None:
    """Fail with the valid choices when ``mode`` is not one of :data:`MODES`."""
    if mode not in MODES:
        raise ConfigError(f"{owner}: mode {mode!r} is not one of {', '.join(MODES)}")


def prepare(
    logits: Tensor, target: Tensor, *, mode: str, ignore_index: int | None, owner: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Check shapes and label values and bring the inputs to one layout per mode.

    Returns ``(logits, target, valid)``:

    - multiclass: logits ``(N, C, *S)``, target ``(N, *S)`` int64, valid ``(N, *S)`` bool;
    - binary: logits ``(N, *S)``, target ``(N, *S)`` float, valid ``(N, *S)`` bool;
    - multilabel: logits ``(N, C, *S)``, target ``(N, C, *S)`` float, valid the same.

    Ignored target elements are replaced by 0 so that they index and multiply safely;
    callers must multiply by ``valid``. Half-precision logits are upcast to float32
    because the losses sum over every pixel of the batch, which overflows float16
    (max 65504) for ordinary image sizes.

    Raises ``ValueError`` for a shape or dtype mismatch and
    :class:`~pixelwise.errors.DataError` for a label value the mode cannot hold.
    """
    if not torch.is_floating_point(logits):
        raise ValueError(f"{owner}: logits must be a float tensor but got dtype {logits.dtype}")
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    valid = (
        torch.ones_like(target, dtype=torch.bool)
        if ignore_index is None
        else target != ignore_index
    )

    if mode == "multiclass":
        if logits.dim() < 3:
            raise ValueError(
                f"{owner}: multiclass logits must have shape (N, C, H, W) or (N, C, D, H, W) "
                f"but got {tuple(logits.shape)}"
            )
        expected = (logits.shape[0], *logits.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(
                f"{owner}: multiclass target must have shape {expected} (the logits' shape "
                f"{tuple(logits.shape)} without the class dim) but got {tuple(target.shape)}"
            )
        if torch.is_floating_point(target) or target.is_complex():
            raise ValueError(
                f"{owner}: multiclass target must hold integer class indices but got dtype "
                f"{target.dtype}; convert the masks with .long()"
            )
        target = target.long()
        num_classes = logits.shape[1]
        # On CUDA an out-of-range index is a device-side assert that kills the process
        # without naming the value, so look for it here where the message can help.
        bad = valid & ((target < 0) | (target >= num_classes))
        if bool(bad.any()):
            value = int(target[bad][0])
            raise DataError(
                f"{owner}: target has label {value} but the logits have {num_classes} classes "
                f"and ignore_index is {ignore_index}; set num_classes or ignore_index"
            )
        return logits, torch.where(valid, target, 0), valid

    if mode == "binary":
        if logits.shape != target.shape:
            squeezable = (
                logits.dim() == target.dim() + 1
                and logits.shape[1] == 1
                and (logits.shape[0], *logits.shape[2:]) == tuple(target.shape)
            )
            if not squeezable:
                expected = (target.shape[0], 1, *target.shape[1:])
                raise ValueError(
                    f"{owner}: binary logits must have shape {expected} or "
                    f"{tuple(target.shape)} to match the target {tuple(target.shape)} "
                    f"but got {tuple(logits.shape)}"
                )
            logits = logits[:, 0]
    elif mode == "multilabel":
        if logits.dim() < 3 or logits.shape != target.shape:
            raise ValueError(
                f"{owner}: multilabel target must have the logits' shape "
                f"{tuple(logits.shape)} (N, C, *S) but got {tuple(target.shape)}"
            )
    else:
        check_mode(mode, owner=owner)

    target = target.to(logits.dtype)
    # Soft targets in [0, 1] are fine; anything else is usually a {0, 255} mask that was
    # never rescaled, which would train silently towards nonsense.
    bad = valid & ((target < 0) | (target > 1))
    if bool(bad.any()):
        value = float(target[bad][0])
        raise DataError(
            f"{owner}: {mode} target must lie in [0, 1] but has value {value:g} "
            f"(ignore_index is {ignore_index}); rescale the masks (e.g. 255 -> 1) or "
            f"set ignore_index"
        )
    return logits, torch.where(valid, target, 0.0), valid
