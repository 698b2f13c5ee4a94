"""Training loop for instance segmentation models (Mask R-CNN): data, model, optimiser,
schedule, then epochs of steps with COCO validation and atomic checkpoints. What is
particular to the task (model, dataset, evaluation) comes from :mod:`pixelwise.tasks.instance`.

The run folder holds ``config.yaml``, ``log.csv`` (every ``log_every`` steps: each of the
model's losses, the LR and images/s), ``metrics.csv`` (per validation: box and mask AP),
``last/`` (resumable) and ``best/`` (highest validation mask AP).
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .. import config as config_mod
from ..bf16_guard import guard_for_training
from ..config import ExperimentCfg
from ..data.instances import InstanceEpochSeeded, instance_collate
from ..errors import ConfigError, TrainingError
from ..hub import save_model
from ..metrics.coco import STATS
from ..runtime import autocast, resolve_device, seed_everything
from ..tasks.instance import (
    build_instance_dataset,
    build_instance_model,
    evaluate_instances,
    instance_class_names,
    instance_meta,
)
from .checkpoint import load_checkpoint, save_checkpoint
from .loaders import EPOCH_SEED_STRIDE
from .logging import append_csv, truncate_csv
from .optim import build_optimizer
from .schedule import make_schedule

__all__ = ["train_instances"]


def _loaders(cfg: ExperimentCfg) -> tuple[DataLoader, DataLoader, list[str]]:
    d = cfg.data
    train_ds = InstanceEpochSeeded(build_instance_dataset(cfg, d.train_split, train=True))
    val_ds = build_instance_dataset(cfg, d.val_split, train=False)
    if len(train_ds) < d.batch_size:
        raise ConfigError(f"the training set has {len(train_ds)} samples, fewer than data.batch_size "
                          f"{d.batch_size}; lower batch_size or add data")
    common = {"num_workers": d.num_workers, "collate_fn": instance_collate, "pin_memory": False}
    train = DataLoader(train_ds, batch_size=d.batch_size, shuffle=True, drop_last=True,
                       generator=torch.Generator(), **common)
    val = DataLoader(val_ds, batch_size=d.batch_size, shuffle=False, **common)
    return train, val, instance_class_names(cfg, val_ds)


def train_instances(cfg: ExperimentCfg, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train an instance model from ``cfg``; returns the trainer state (step, epoch, best mask AP, history).

    Uses ``train``: ``epochs`` / ``max_steps``, ``optimizer`` (sgd | adamw), ``lr``,
    ``weight_decay``, ``momentum``, ``schedule`` + ``warmup_steps``, ``amp`` (none | bf16 | fp16),
    ``grad_clip``, ``val_every``, ``log_every``, ``seed``, ``device``, ``out_dir``. ``train.loss``
    is not used: Mask R-CNN sums its own five losses (RPN objectness + box, classifier, box, mask).
    A non-finite loss stops the run with the names of the images in the batch.
    """
    t = cfg.train
    out = Path(t.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(t.device)
    seed_everything(t.seed)
    train_loader, val_loader, names = _loaders(cfg)
    model = build_instance_model(cfg).to(device)
    guard_for_training(model, device, t.amp)
    optimizer = build_optimizer(cfg, model)
    steps_per_epoch = len(train_loader)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, make_schedule(t.schedule, total_steps=total_steps, warmup_steps=t.warmup_steps,
                                 power=t.poly_power))
    scaler = torch.amp.GradScaler("cuda", enabled=t.amp == "fp16")
    meta = instance_meta(cfg, names)
    state: dict[str, Any] = {"step": 0, "epoch": 0, "best_mask_ap": -1.0, "history": []}
    if resume:
        if not (out / "last").exists() and not (out / ".last.old").exists():
            raise ConfigError(f"--resume: no checkpoint in {str(out / 'last')!r}; run without --resume to start")
        state = load_checkpoint(out / "last", model, optimizer, scheduler)
        truncate_csv(out / "log.csv", state["step"])
    else:
        config_mod.save(cfg, out / "config.yaml")
        for name in ("log.csv", "metrics.csv"):
            (out / name).unlink(missing_ok=True)

    step = state["step"]
    # Epochs run until the step budget is spent (a resume with a larger max_steps may start mid-schedule).
    for epoch in itertools.count(state["epoch"]):
        model.train()
        # Shuffle and augmentation seeded from (seed, epoch): a resumed run replays them.
        train_loader.generator.manual_seed(t.seed * EPOCH_SEED_STRIDE + epoch)
        train_loader.dataset.set_epoch_seed(t.seed * EPOCH_SEED_STRIDE + epoch)
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{max(epochs, epoch + 1)}", disable=not progress, leave=False)
        seen, tic = 0, time.perf_counter()
        for images, targets in bar:
            images = [image.to(device, non_blocking=True) for image in images]
            targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in tg.items()} for tg in targets]
            with autocast(device, t.amp):
                losses = model(images, targets)
            losses = {k: v.float() for k, v in losses.items()}
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                bad = {k: round(v.item(), 4) for k, v in losses.items()}
                raise TrainingError(
                    f"loss is {loss.item()} ({bad}) at step {step} (epoch {epoch + 1}), images "
                    f"{[tg.get('name', tg.get('image_id')) for tg in targets]}; {str(out / 'last')!r} holds the "
                    f"last good state. Fixes: lower train.lr, raise train.warmup_steps, set train.grad_clip "
                    f"(e.g. 10), use train.amp: none, and check those images' boxes and masks")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if t.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            seen += len(images)
            speed = seen / max(time.perf_counter() - tic, 1e-9)
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{loss.item():.3f}", mask=f"{losses['loss_mask'].item():.3f}", lr=f"{lr:.2e}")
            if step % t.log_every == 0 or step == total_steps:
                append_csv(out / "log.csv", {"step": step, "epoch": epoch + 1, "loss": round(loss.item(), 6),
                                             **{k: round(v.item(), 6) for k, v in losses.items()},
                                             "lr": lr, "images_per_s": round(speed, 2)})
            if step >= total_steps:
                break
        bar.close()

        record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "train_loss": round(loss.item(), 6)}
        # Every row has every column (empty between validations): metrics.csv keeps one header.
        record.update({f"{kind}_{k}": None for kind in ("box", "mask") for k in STATS})
        if (epoch + 1) % t.val_every == 0 or step >= total_steps:
            scores = evaluate_instances(model, val_loader, class_names=names, device=device, amp=t.amp,
                                        progress=progress)
            record.update({f"box_{k}": v for k, v in scores["bbox"].items()})
            record.update({f"mask_{k}": v for k, v in scores["segm"].items()})
            if scores["segm"]["AP"] > state["best_mask_ap"]:
                state["best_mask_ap"] = scores["segm"]["AP"]
                save_model(model, out / "best", {**meta, "scores": scores, "step": step})
        append_csv(out / "metrics.csv", record)
        state["history"].append(record)
        state.update(step=step, epoch=epoch + 1)
        save_checkpoint(out / "last", model, optimizer, scheduler, state, meta)
        if progress:
            tqdm.write(", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in record.items() if v is not None))
        if step >= total_steps:
            break
    (out / "history.json").write_text(json.dumps(state["history"], indent=2))
    return state
