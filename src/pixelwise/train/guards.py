"""Non-finite weights and statistics: found cheaply during training, never saved.

A loss can stay finite while the network is already broken: an SGD run warmed up to a huge
learning rate reached loss 1e16 with infinite BatchNorm ``running_var``, and every later
prediction was background. :func:`nonfinite_state` checks every floating parameter and the
normalisation statistics (``running_mean``/``running_var``) in one pass on the device;
the loop calls :func:`check_finite` every ``log_every`` steps and before every save.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import TrainingError

__all__ = ["check_finite", "nonfinite_state"]

_STATS = ("running_mean", "running_var")


def nonfinite_state(model: nn.Module) -> list[str]:
    """Names of the parameters and normalisation statistics of ``model`` holding NaN or inf."""
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    named += [(n, b) for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] in _STATS and b.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([t.detach().isfinite().all() for _, t in named])  # one device -> host copy below
    if bool(finite.all()):
        return []
    return [name for (name, _), ok in zip(named, finite.tolist()) if not ok]


def check_finite(model: nn.Module, *, step: int, epoch: int, where: str, last: str,
                 bad: list[str] | None = None) -> None:
    """Raise :class:`TrainingError` if ``model`` holds non-finite values (``bad``: already found)."""
    bad = nonfinite_state(model) if bad is None else bad
    if not bad:
        return
    shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
    raise TrainingError(
        f"the model's weights or statistics are NaN/inf at step {step} (epoch {epoch}), found {where}: {shown}; "
        f"nothing non-finite was saved and {last!r} holds the last good state. Fixes: lower train.lr or add "
        f"train.warmup_steps, set train.grad_clip (e.g. 1.0), use train.amp: none, then --resume or start again")
