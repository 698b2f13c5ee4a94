"""Saved models and training checkpoints, written atomically and read without pickle.

A saved model is a folder::

    config.json          {"model": create_model kwargs incl. "name", "data": preprocessing + class names}
    model.safetensors    the weights

A training checkpoint is the same folder plus ``trainer.pt`` (optimizer, scheduler and RNG
states; only tensors and plain Python values, read back with ``torch.load(weights_only=True)``)
and ``trainer.json`` (step, epoch, best score, history).

Atomicity: a folder is written under a temporary name beside its final place, then swapped
in with renames. A process killed at any moment leaves either the old or the new folder
complete; :func:`resolve` finds whichever survived.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TRAINER = "trainer.pt"
TRAINER_JSON = "trainer.json"


@contextmanager
def atomic_dir(folder: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``folder`` (old copy removed last)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(folder: str | Path) -> Path:
    """The complete copy of ``folder``: itself, or the previous one if a swap was interrupted."""
    folder = Path(folder)
    if (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file():
        return folder
    old = folder.with_name(f".{folder.name}.old")
    if (old / CONFIG).is_file() and (old / WEIGHTS).is_file():
        return old
    raise ConfigError(f"{str(folder)!r} is not a saved pixelwise model (no {CONFIG} + {WEIGHTS}); "
                      f"pass a folder written by `pixelwise train` or save_model()")


def write_model(tmp: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    config = {"model": getattr(model, "config", {}), **meta}
    if not config["model"]:
        raise ValueError("model has no .config; build it with pixelwise.create_model so it can be saved")
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / WEIGHTS))


def save_model(model: nn.Module, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` atomically. ``meta`` goes into config.json."""
    with atomic_dir(folder) as tmp:
        write_model(tmp, model, meta or {})
    return Path(folder)


def read_config(folder: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a saved model folder."""
    return json.loads((resolve(folder) / CONFIG).read_text())


def load_model(folder: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved model (no network, no pickle). Returns ``(model in eval mode, config)``."""
    from ..models import create_model

    folder = resolve(folder)
    config = json.loads((folder / CONFIG).read_text())
    model = create_model(**config["model"])
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval(), config


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
