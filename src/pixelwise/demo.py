"""``pixelwise demo``: the whole path on the embedded synthetic dataset, no download.

Train a small U-Net -> evaluate the best checkpoint -> predict validation images ->
write ``report.html`` with curves, the per-class table and predictions (the report every
``pixelwise train`` ends with, :mod:`pixelwise.train.run_report`).
"""

from __future__ import annotations

from typing import Any

import torch

from .config import ExperimentCfg, from_dict
from .train.loop import train
from .train.run_report import write_run_report

# The same settings as configs/demo.yaml (a test keeps the two equal).
DEMO = {
    "model": {"name": "unet", "args": {"base_channels": 16, "depth": 4, "norm": "batch"}},
    "data": {"dataset": "synthetic", "num_classes": 5, "crop_size": 64, "augment": "none",
             "batch_size": 16, "train_samples": 4096, "val_samples": 128, "seed": 0},
    "train": {"epochs": 3, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0001,
              "loss": [{"name": "ce", "weight": 1.0}, {"name": "dice", "weight": 0.5}],
              "amp": "bf16", "channels_last": True, "val_every": 1, "log_every": 10, "out_dir": "runs/demo"},
}


def demo_config(out_dir: str | None = None) -> ExperimentCfg:
    """The demo experiment (optionally writing to ``out_dir``)."""
    cfg = from_dict(DEMO)
    if out_dir is not None:
        cfg.train.out_dir = out_dir
    return cfg


def run_demo(out_dir: str = "runs/demo", *, overrides: dict[str, Any] | None = None, progress: bool = True) -> dict:
    """Run the demo; returns the final validation scores and the report path."""
    cfg = demo_config(out_dir)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    state = train(cfg, overwrite=True, progress=progress)  # the demo folder is the demo's own
    result = write_run_report(cfg.train.out_dir, cfg, title="pixelwise demo: U-Net on synthetic shapes",
                              progress=progress)
    return {**result, "steps": state["step"]}
