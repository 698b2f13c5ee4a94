"""Learning-rate schedules: linear warmup, then poly, cosine or constant.

Every schedule is a plain function ``factor(step) -> float`` that multiplies each parameter
group's base LR (``torch.optim.lr_scheduler.LambdaLR``), so per-group LR multipliers (a
slower pretrained encoder) survive the schedule, and a resumed run continues it exactly
because the factor depends on the step count alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..errors import ConfigError

SCHEDULES = ("poly", "cosine", "constant")


def lr_factor(step: int, *, kind: str, total_steps: int, warmup_steps: int = 0, power: float = 0.9) -> float:
    """LR multiplier for optimiser step ``step`` (0-based: the LR the step is taken with).

    - warmup (``step < warmup_steps``): ``(step + 1) / warmup_steps``;
    - afterwards, with progress ``p = (step - warmup_steps) / (total_steps - warmup_steps)``:
      ``poly``: ``(1 - p) ** power`` (DeepLab, Chen et al. 2016);
      ``cosine``: ``(1 + cos(pi * p)) / 2`` (SGDR without restarts, Loshchilov & Hutter 2017);
      ``constant``: ``1``.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"train.schedule {kind!r} is unknown; use one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if kind == "poly":
        return (1.0 - p) ** power
    return 0.5 * (1.0 + math.cos(math.pi * p))


def make_schedule(kind: str, *, total_steps: int, warmup_steps: int = 0, power: float = 0.9) -> Callable[[int], float]:
    """``lr_factor`` with everything but the step fixed (for ``LambdaLR``); checks ``kind`` now."""
    lr_factor(0, kind=kind, total_steps=total_steps, warmup_steps=warmup_steps, power=power)
    if warmup_steps < 0 or total_steps < 1:
        raise ConfigError(f"train.warmup_steps ({warmup_steps}) must be >= 0 and the run must have >= 1 step "
                          f"(got {total_steps}); fix train.epochs / train.max_steps")

    def factor(step: int) -> float:
        return lr_factor(step, kind=kind, total_steps=total_steps, warmup_steps=warmup_steps, power=power)

    return factor
