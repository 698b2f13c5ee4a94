"""``pixelwise demo``: the whole path on the embedded synthetic dataset, no download.

Train a small U-Net -> evaluate the best checkpoint -> predict validation images ->
write ``report.html`` with curves, the per-class table and predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .config import ExperimentCfg, from_dict
from .data import build_dataset, class_names, pad_collate
from .data.io import colorize, default_palette, overlay, write_image, write_mask
from .hub import load_model
from .infer.runtime import predict_image
from .tasks.semantic import evaluate
from .train.loop import train
from .train.report import plot_curves, write_report

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


def write_samples(model_dir: Path, cfg: ExperimentCfg, out: Path, count: int = 6) -> list[tuple[str, list[Path]]]:
    """Predict the first ``count`` validation images; write image/truth/prediction/overlay PNGs."""
    model, saved = load_model(model_dir)
    data = saved["data"]
    ds = build_dataset(cfg.data, cfg.data.val_split, train=False)
    palette = default_palette(256)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(min(count, len(ds))):
        image, truth = ds.generate(i)
        labels, _ = predict_image(model, image, mean=data["mean"], std=data["std"])
        name = f"val_{i:03d}"
        paths = [out / f"{name}_image.png", out / f"{name}_truth.png", out / f"{name}.png", out / f"{name}_overlay.png"]
        write_image(paths[0], image)
        write_image(paths[1], colorize(truth, palette))
        write_mask(paths[2], labels, palette)
        write_image(paths[3], overlay(image, labels, palette))
        rows.append((name, paths))
    return rows


def run_demo(out_dir: str = "runs/demo", *, overrides: dict[str, Any] | None = None, progress: bool = True) -> dict:
    """Run the demo; returns the final validation scores and the report path."""
    cfg = demo_config(out_dir)
    for section, values in (overrides or {}).items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    state = train(cfg, progress=progress)
    run = Path(cfg.train.out_dir)
    model, _ = load_model(run / "best")
    val = build_dataset(cfg.data, cfg.data.val_split, train=False)
    loader = DataLoader(val, batch_size=cfg.data.batch_size, collate_fn=pad_collate)
    cm = evaluate(model, loader, num_classes=cfg.data.num_classes, ignore_index=cfg.data.ignore_index,
                  progress=progress)
    scores = cm.compute()
    table = cm.format_table(class_names(cfg.data))
    samples = write_samples(run / "best", cfg, run / "predictions")
    curves = plot_curves(run)
    report = write_report(run, title="pixelwise demo: U-Net on synthetic shapes", scores=scores, table=table,
                          samples=samples, curves=curves)
    return {"scores": scores, "table": table, "report": str(report), "steps": state["step"]}
