"""``fit(task, ...)``: the training loop for a task object built in Python (a recipe), with the
few settings a recipe passes instead of a YAML file. It is :func:`pixelwise.train.loop.train`
(the one loop: DDP, accumulation, AMP, EMA, resume, Ctrl-C save, NaN guard, logs), run in a
temporary folder unless ``out_dir`` is given; it returns every step's ``log.csv`` row and
every epoch's ``metrics.csv`` row.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Any

import torch.distributed as dist

from .. import config as config_mod
from ..tasks.base import Task
from .loop import train


def fit(task: Task, *, steps: int, batch_size: int, lr: float, optimizer: str = "adamw", weight_decay: float = 0.0,
        schedule: str = "constant", seed: int = 0, device: str = "cpu", amp: str = "none",
        out_dir: str | Path | None = None, val_every: int = 1_000_000, plots: bool = False) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train ``task`` for ``steps`` optimiser steps of ``batch_size`` samples. Returns ``(log rows:
    step, loss, loss_<term>, lr, ...; metrics rows: epoch, step, train_loss and the task's
    scores)`` as floats. Validation runs every ``val_every`` epochs and after the last step."""
    settings = {"max_steps": steps, "lr": lr, "optimizer": optimizer, "weight_decay": weight_decay,
                "schedule": schedule, "seed": seed, "device": device, "amp": amp, "log_every": 1,
                "val_every": val_every, "tensorboard": False, "plots": plots, "epochs": 1}
    with tempfile.TemporaryDirectory(prefix="pixelwise-fit-") as tmp:
        out = Path(out_dir) if out_dir is not None else Path(tmp) / "run"
        cfg = config_mod.from_dict({"data": {"batch_size": batch_size, "num_workers": 0},
                                    "train": {**settings, "out_dir": str(out)}})
        train(cfg, task=task, progress=False)
        rows = [_rows(out / "log.csv"), _rows(out / "metrics.csv")] if (out / "log.csv").is_file() else [[], []]
        if dist.is_available() and dist.is_initialized():  # under torchrun only rank 0 writes the logs
            dist.broadcast_object_list(rows, src=0)
        return rows[0], rows[1]


def _rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]
