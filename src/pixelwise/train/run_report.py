"""The report every training run ends with (and ``pixelwise eval --report`` writes).

``write_run_report(run_dir, cfg)`` evaluates the run's ``best/`` model on the validation
split and writes ``report.html`` (self-contained: images embedded) with the scores, the
per-class table, the training curves, the confusion matrix, per-class IoU, and a few
validation images with their ground truth, prediction and overlay (also kept as PNGs in
``predictions/``). It works on any semantic dataset whose items are
``{"image": (C, H, W), "mask": (H, W)}``: images are shown as the network saw them
(normalisation undone; the first channel in grey for images that are not 3-channel).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..config import ExperimentCfg
from ..data import build_dataset, class_names, pad_collate
from ..data.io import colorize, default_palette, overlay, write_image, write_mask
from ..hub import load_model
from ..tasks.semantic import evaluate
from .report import plot_class_iou, plot_confusion, plot_curves, write_report

__all__ = ["shown_image", "write_run_report"]


def shown_image(image: torch.Tensor, mean: list[float], std: list[float]) -> np.ndarray:
    """A network input ``(C, H, W)`` as ``(H, W, 3)`` uint8 for display: normalisation undone."""
    x = image.detach().float().cpu()
    c = x.shape[0]
    if len(mean) == c and len(std) == c:
        x = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    x = x[:3] if c >= 3 else x[:1].expand(3, -1, -1)
    if len(mean) != c or c != 3:  # unknown scale: stretch to the image's own range
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo).clamp_min(1e-12)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def write_run_report(run_dir: str | Path, cfg: ExperimentCfg, *, model_dir: str | Path | None = None,
                     split: str | None = None, count: int = 6, title: str | None = None, device: str = "cpu",
                     progress: bool = False) -> dict[str, Any]:
    """Evaluate ``model_dir`` (default ``run_dir/best``) on ``split`` (default the validation
    split) and write ``run_dir/report.html``. Returns ``{"scores", "table", "report"}``."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    model, saved = load_model(model_dir or run / "best", device=device)
    model.eval()
    data = saved.get("data", {})
    mean, std = list(data.get("mean", cfg.data.mean)), list(data.get("std", cfg.data.std))
    if data.get("image_mode", cfg.data.image_mode) == "raw":
        mean = std = []  # stored-value scale: shown_image stretches each image to its own range
    names = class_names(cfg.data)
    val = build_dataset(cfg.data, split or cfg.data.val_split, train=False)
    loader = DataLoader(val, batch_size=cfg.data.batch_size, collate_fn=pad_collate)
    cm = evaluate(model, loader, num_classes=cfg.data.num_classes, ignore_index=cfg.data.ignore_index,
                  device=torch.device(device), progress=progress)
    scores = cm.compute()
    table = cm.format_table(names)
    figures = [plot_confusion(cm.matrix.cpu().numpy(), names, run / "report_confusion.png"),
               plot_class_iou(cm.iou().numpy(), names, run / "report_class_iou.png")]
    palette = default_palette(256)
    out = run / "predictions"
    out.mkdir(parents=True, exist_ok=True)
    samples = []
    with torch.no_grad():
        for i in range(min(count, len(val))):
            item = val[i]
            logits = model(item["image"][None].to(device))
            logits = logits.logits if hasattr(logits, "logits") else logits
            labels = logits.argmax(1)[0].cpu().numpy()
            truth = item["mask"].numpy()
            image = shown_image(item["image"], mean, std)
            name = f"val_{i:03d}"
            paths = [out / f"{name}_image.png", out / f"{name}_truth.png", out / f"{name}.png",
                     out / f"{name}_overlay.png"]
            write_image(paths[0], image)
            write_image(paths[1], colorize(truth, palette, ignore_index=cfg.data.ignore_index))
            write_mask(paths[2], labels, palette)
            write_image(paths[3], overlay(image, labels, palette, ignore_index=cfg.data.ignore_index))
            samples.append((str(item.get("name", name)), paths))
    curves = plot_curves(run) if (run / "log.csv").is_file() else None
    report = write_report(run, title=title or f"pixelwise: {cfg.model.name} on {cfg.data.dataset}", scores=scores,
                          table=table, samples=samples, curves=curves, figures=figures)
    return {"scores": scores, "table": table, "report": str(report)}
