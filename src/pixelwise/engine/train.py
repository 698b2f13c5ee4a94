"""The training loop. It reads top to bottom: data, model, optimiser, schedule, then epochs
of steps with validation and checkpoints. A killed run resumes from ``out_dir/last``."""

from __future__ import annotations

import csv
import functools
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import config as config_mod
from ..config import ExperimentCfg
from ..data import EpochSeeded, build_dataset, class_names, pad_collate
from ..errors import ConfigError, TrainingError
from ..losses import build_loss
from ..models import SegmentationOutput, create_model
from .checkpoint import load_checkpoint, save_checkpoint, save_model
from .evaluate import autocast, evaluate


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {name!r} but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_model(cfg: ExperimentCfg) -> nn.Module:
    """``create_model`` from the ``model`` section (plus ``data.num_classes``)."""
    kwargs: dict[str, Any] = {"num_classes": cfg.data.num_classes, "in_channels": cfg.model.in_channels}
    if cfg.model.encoder is not None:
        kwargs["encoder"] = cfg.model.encoder
    if cfg.model.encoder_weights is not None:
        kwargs["encoder_weights"] = cfg.model.encoder_weights
    overlap = set(kwargs) & set(cfg.model.args)
    if overlap:
        raise ConfigError(f"model.args must not repeat {sorted(overlap)}; set them in their own keys")
    return create_model(cfg.model.name, **kwargs, **cfg.model.args)


def model_meta(cfg: ExperimentCfg) -> dict[str, Any]:
    """What a saved model needs besides its weights to turn images into masks."""
    return {"data": {"num_classes": cfg.data.num_classes, "class_names": class_names(cfg.data),
                     "ignore_index": cfg.data.ignore_index, "mean": cfg.data.mean, "std": cfg.data.std},
            "experiment": config_mod.to_dict(cfg)}


def build_optimizer(cfg: ExperimentCfg, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum); no weight decay on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.train.lr)
    if cfg.train.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.train.lr, momentum=cfg.train.momentum, nesterov=True)
    raise ConfigError(f"train.optimizer {cfg.train.optimizer!r} is unknown; use adamw or sgd")


def poly_schedule(total_steps: int, power: float, warmup_steps: int):
    """LR factor: linear warmup, then ``(1 - t/T)^power`` (the DeepLab "poly" policy)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, 1 - step / max(1, total_steps)) ** power

    return factor


def compute_loss(loss_fn: nn.Module, output: Tensor | SegmentationOutput, target: Tensor) -> Tensor:
    """Main loss plus weighted auxiliary losses, in float32 whatever the autocast dtype."""
    if isinstance(output, SegmentationOutput):
        loss = loss_fn(output.logits.float(), target)
        for aux, weight in zip(output.aux, output.aux_weights):
            loss = loss + weight * loss_fn(aux.float(), target)
        return loss
    return loss_fn(output.float(), target)


def make_loaders(cfg: ExperimentCfg) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders; the train order is re-seeded per epoch by ``train``."""
    d = cfg.data
    train_ds = EpochSeeded(build_dataset(d, d.train_split, train=True))
    val_ds = build_dataset(d, d.val_split, train=False)
    if len(train_ds) < d.batch_size:
        raise ConfigError(f"the training set has {len(train_ds)} samples, fewer than data.batch_size "
                          f"{d.batch_size}; lower batch_size or add data")
    common = {"num_workers": d.num_workers, "pin_memory": torch.cuda.is_available(),
              "collate_fn": functools.partial(pad_collate, ignore_index=d.ignore_index),
              "persistent_workers": False}
    train = DataLoader(train_ds, batch_size=d.batch_size, shuffle=True, drop_last=True,
                       generator=torch.Generator(), **common)
    val = DataLoader(val_ds, batch_size=d.batch_size, shuffle=False, **common)
    return train, val


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _truncate_csv(path: Path, max_step: int) -> None:
    """Drop log rows written after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    keep = [r for r in rows if int(r["step"]) <= max_step]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(keep)


def train(cfg: ExperimentCfg, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg``; returns the trainer state (step, epoch, best mIoU, history).

    Writes to ``cfg.train.out_dir``: ``config.yaml``, ``log.csv`` (per ``log_every`` steps),
    ``metrics.csv`` (per validation), ``last/`` (resumable, every epoch) and ``best/``
    (highest validation mIoU). With ``resume=True`` training continues from ``last/`` and
    ends at the same step count as an uninterrupted run.
    """
    t = cfg.train
    out = Path(t.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(t.device)
    seed_everything(t.seed)
    train_loader, val_loader = make_loaders(cfg)
    model = build_model(cfg).to(device)
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    loss_fn = build_loss(t.loss, ignore_index=cfg.data.ignore_index)
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = len(train_loader)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, poly_schedule(total_steps, t.poly_power, t.warmup_steps))
    scaler = torch.amp.GradScaler("cuda", enabled=t.amp == "fp16")
    meta = model_meta(cfg)
    state: dict[str, Any] = {"step": 0, "epoch": 0, "best_miou": -1.0, "history": []}
    if resume:
        if not (out / "last").exists() and not (out / ".last.old").exists():
            raise ConfigError(f"--resume: no checkpoint in {str(out / 'last')!r}; run without --resume to start")
        state = load_checkpoint(out / "last", model, optimizer, scheduler)
        _truncate_csv(out / "log.csv", state["step"])
    else:
        config_mod.save(cfg, out / "config.yaml")
        for name in ("log.csv", "metrics.csv"):
            (out / name).unlink(missing_ok=True)

    step = state["step"]
    for epoch in range(state["epoch"], epochs):
        model.train()
        # Seed the shuffle and the augmentations from (seed, epoch) so a resumed run replays them.
        train_loader.generator.manual_seed(t.seed * 100_003 + epoch)
        train_loader.dataset.set_epoch_seed(t.seed * 100_003 + epoch)
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        seen, tic = 0, time.perf_counter()
        for batch in bar:
            image = batch["image"].to(device, memory_format=memory_format, non_blocking=True)
            target = batch["mask"].to(device, non_blocking=True)
            with autocast(device, t.amp):
                output = model(image)
            loss = compute_loss(loss_fn, output, target)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss is {loss.item()} at step {step} (epoch {epoch + 1}), batch {batch['name']}; "
                    f"nothing was saved from this step and {str(out / 'last')!r} holds the last good "
                    f"state. Fixes: lower train.lr, set train.grad_clip (e.g. 1.0), use train.amp: none, "
                    f"and check those files for NaN/inf or wrong labels")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            seen += image.shape[0]
            speed = seen / max(time.perf_counter() - tic, 1e-9)
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
            if step % t.log_every == 0 or step == total_steps:
                _append_csv(out / "log.csv", {"step": step, "epoch": epoch + 1, "loss": round(loss.item(), 6),
                                              "lr": lr, "images_per_s": round(speed, 2)})
            if step >= total_steps:
                break
        bar.close()

        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "train_loss": round(loss.item(), 6)}
        if (epoch + 1) % t.val_every == 0 or step >= total_steps:
            cm = evaluate(model, val_loader, num_classes=cfg.data.num_classes, ignore_index=cfg.data.ignore_index,
                          device=device, amp=t.amp, channels_last=t.channels_last, progress=progress)
            scores = cm.compute()
            record.update(miou=scores["miou"], pixel_accuracy=scores["pixel_accuracy"],
                          mean_dice=scores["mean_dice"])
            if scores["miou"] > state["best_miou"]:
                state["best_miou"] = scores["miou"]
                save_model(model, out / "best", {**meta, "scores": scores, "step": step})
        _append_csv(out / "metrics.csv", record)
        state["history"].append(record)
        state.update(step=step, epoch=epoch + 1)
        save_checkpoint(out / "last", model, optimizer, scheduler, state, meta)
        if progress:
            summary = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
            tqdm.write(summary)
        if step >= total_steps:
            break
    (out / "history.json").write_text(json.dumps(state["history"], indent=2))
    return state
