"""The trainer's resumable state: :mod:`.checkpoint`'s folder format plus what the larger
training loop adds (GradScaler, EMA weights, the GAN discriminator and its optimiser).

``trainer.pt`` stays a dict of tensors and plain values, so it loads with
``torch.load(weights_only=True)``; a checkpoint written by
:func:`.checkpoint.save_checkpoint` (no extras) is read by :func:`load_train_state` too.
The folder is written atomically (a kill at any moment leaves the old or the new copy).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import ConfigError
from .checkpoint import TRAINER, TRAINER_JSON, WEIGHTS, write_model, atomic_dir, resolve, rng_state, set_rng_state


def save_train_state(folder: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     trainer: dict[str, Any], meta: dict[str, Any], extras: dict[str, Any]) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (the raw model's weights) + ``trainer.pt``
    (optimiser, scheduler, RNG and ``extras``: name -> ``state_dict()``) + ``trainer.json``."""
    with atomic_dir(folder) as tmp:
        write_model(tmp, model, meta)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
                    "extras": extras}, tmp / TRAINER)
        (tmp / TRAINER_JSON).write_text(json.dumps(trainer, indent=2))
    return Path(folder)


def load_train_state(folder: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Restore what :func:`save_train_state` wrote into live objects; returns
    ``(trainer.json, extras)`` (extras: ``{}`` for an older checkpoint)."""
    folder = resolve(folder)
    if not (folder / TRAINER).is_file():
        raise ConfigError(f"{str(folder)!r} holds a model but no training state ({TRAINER}); "
                          f"it cannot be resumed, only evaluated or used for prediction")
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    state = torch.load(folder / TRAINER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((folder / TRAINER_JSON).read_text()), state.get("extras", {})


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
