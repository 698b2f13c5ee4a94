"""The trainer's resumable state: :mod:`.checkpoint`'s folder format plus what the larger
training loop adds (GradScaler, EMA weights, the GAN discriminator and its optimiser).

``trainer.pt`` stays a dict of tensors and plain values, so it loads with
``torch.load(weights_only=True)``; a checkpoint written by
:func:`.checkpoint.save_checkpoint` (no extras) is read by :func:`load_train_state` too.
The folder is written atomically (a kill at any moment leaves the old or the new copy).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint


def save_train_state(folder: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     trainer: dict[str, Any], meta: dict[str, Any], extras: dict[str, Any]) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (the raw model's weights) + ``trainer.pt``
    (optimiser, scheduler, RNG and ``extras``: name -> ``state_dict()``) + ``trainer.json``."""
    return save_checkpoint(folder, model, optimizer, scheduler, trainer, meta, extras)


def load_train_state(folder: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore what :func:`save_train_state` wrote into live objects; returns
    ``(trainer.json, extras)`` (extras: ``{}`` for an older checkpoint)."""
    return load_checkpoint(folder, model, optimizer, scheduler, with_extras=True)


def remove_stale_temporaries(run_dir: str | Path) -> list[Path]:
    """Delete half-written ``.last.tmp-<pid>`` / ``.best.tmp-<pid>`` folders that a killed
    process left in ``run_dir`` (only one process writes a run folder, so any such folder
    found when a run starts is garbage). Returns what was removed."""
    removed = []
    for pattern in (".last.tmp-*", ".best.tmp-*"):
        for path in Path(run_dir).glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed
