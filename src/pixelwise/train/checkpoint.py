"""The trainer's resumable state: a model folder (:mod:`pixelwise.hub`) plus ``trainer.pt``
(optimizer, scheduler and RNG states, and extras such as the GradScaler, EMA weights, the
GAN discriminator and its optimiser) and ``trainer.json`` (step, epoch, best score, history).

``trainer.pt`` is a dict of tensors and plain values only, read back with
``torch.load(weights_only=True)``. The folder is written atomically (a kill at any moment
leaves the old or the new copy; :func:`pixelwise.hub.resolve` finds it).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from ..errors import ConfigError
from ..hub import WEIGHTS, atomic_dir, resolve, write_model

TRAINER = "trainer.pt"
TRAINER_JSON = "trainer.json"


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors / plain values (safe for weights_only)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, trainer: dict[str, Any], meta: dict[str, Any],
                    extras: dict[str, Any] | None = None) -> Path:
    """Atomically write a resumable checkpoint (a saved model + optimizer/scheduler/RNG state,
    and ``extras``: name -> ``state_dict()`` of anything else the loop keeps, e.g. EMA)."""
    with atomic_dir(folder) as tmp:
        write_model(tmp, model, meta)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state(), "extras": extras or {}}, tmp / TRAINER)
        (tmp / TRAINER_JSON).write_text(json.dumps(trainer, indent=2))
    return Path(folder)


def load_checkpoint(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Any, *, with_extras: bool = False) -> Any:
    """Restore a checkpoint written by :func:`save_checkpoint` into live objects; returns
    trainer.json, or ``(trainer.json, extras)`` with ``with_extras`` (``{}`` when none were saved)."""
    folder = resolve(folder)
    if not (folder / TRAINER).is_file():
        raise ConfigError(f"{str(folder)!r} holds a model but no training state ({TRAINER}); "
                          f"it cannot be resumed, only evaluated or used for prediction")
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    state = torch.load(folder / TRAINER, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    trainer = json.loads((folder / TRAINER_JSON).read_text())
    return (trainer, state.get("extras", {})) if with_extras else trainer


def save_train_state(folder: str | Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                     trainer: dict[str, Any], meta: dict[str, Any], extras: dict[str, Any]) -> Path:
    """Keyword form of :func:`save_checkpoint`: ``config.json`` + ``model.safetensors`` (the raw
    model's weights) + ``trainer.pt`` (optimiser, scheduler, RNG and ``extras``) + ``trainer.json``."""
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
