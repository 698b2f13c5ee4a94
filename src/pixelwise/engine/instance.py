"""Training loop for instance segmentation models (Mask R-CNN), reading top to bottom like
the semantic loop: data, model, optimiser, schedule, then epochs of steps with COCO
validation and atomic checkpoints. ``pixelwise train`` comes here when ``model.name`` is
an instance model (``registry.INSTANCE_MODELS``).

The run folder holds ``config.yaml``, ``log.csv`` (every ``log_every`` steps: each of the
model's losses, the LR and images/s), ``metrics.csv`` (per validation: box and mask AP),
``last/`` (resumable) and ``best/`` (highest validation mask AP). Checkpoints are
``config.json`` + ``model.safetensors`` like every pixelwise model, written atomically.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import config as config_mod
from ..bf16_guard import guard_for_training
from ..config import ExperimentCfg
from ..data.instances import InstanceEpochSeeded, InstanceTransform, instance_collate
from ..errors import ConfigError, TrainingError
from ..models.maskrcnn import create_instance_model
from ..registry import DATASETS, INSTANCE_MODELS, lookup
from ..runtime import autocast, resolve_device, seed_everything
from .checkpoint import (
    CONFIG,
    WEIGHTS,
    load_checkpoint,
    resolve,
    save_checkpoint,
    save_model,
)
from .instance_eval import STATS, evaluate_instances
from .logging import append_csv, truncate_csv
from .optim import build_optimizer
from .schedule import make_schedule
from .train import model_kwargs

__all__ = [
    "build_instance_dataset",
    "build_instance_model",
    "instance_class_names",
    "is_instance_model",
    "load_instance_model",
    "train_instances",
]


def is_instance_model(name: str) -> bool:
    """Whether ``name`` is an instance segmentation model (trained and evaluated here)."""
    return name in INSTANCE_MODELS


def build_instance_model(cfg: ExperimentCfg) -> nn.Module:
    """``create_instance_model`` from the ``model`` section; classes and normalisation from ``data``."""
    kwargs = model_kwargs(cfg, image_mean=list(cfg.data.mean), image_std=list(cfg.data.std))
    return create_instance_model(cfg.model.name, **kwargs)


def build_instance_dataset(cfg: ExperimentCfg, split: str, *, train: bool) -> Dataset:
    """The ``split`` of ``data.dataset`` with an :class:`InstanceTransform` (scale + flips when training)."""
    try:
        builder = lookup(DATASETS, cfg.data.dataset, "dataset")
    except KeyError as err:
        raise ConfigError(f"data.dataset: {err.args[0]}") from None
    transform = InstanceTransform(train=train and cfg.data.augment != "none")
    return builder(cfg.data, split, train=train, transform=transform)


def instance_class_names(cfg: ExperimentCfg, dataset: Dataset | None = None) -> list[str]:
    """``data.class_names``, else the dataset's ``class_names``, else ``class_0..``; index 0 is background."""
    names = cfg.data.class_names or getattr(dataset, "class_names", None)
    names = list(names) if names is not None else [f"class_{i}" for i in range(cfg.data.num_classes)]
    if len(names) != cfg.data.num_classes:
        raise ConfigError(f"{len(names)} class names {names} but data.num_classes is {cfg.data.num_classes}; "
                          f"they must match (background included)")
    return [str(n) for n in names]


def load_instance_model(folder: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a saved instance model (no network, no pickle). Returns ``(model in eval mode, config)``."""
    folder = resolve(folder)
    config = json.loads((folder / CONFIG).read_text())
    name = config.get("model", {}).get("name")
    if not is_instance_model(str(name)):
        raise ConfigError(f"{str(folder)!r} holds a {name!r} model, not an instance model "
                          f"({', '.join(sorted(INSTANCE_MODELS))}); load it with "
                          f"pixelwise.engine.checkpoint.load_model")
    model = create_instance_model(**config["model"])
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    return model.to(device).eval(), config


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


def _meta(cfg: ExperimentCfg, names: list[str]) -> dict[str, Any]:
    return {"task": "instance",
            "data": {"num_classes": cfg.data.num_classes, "class_names": names, "mean": cfg.data.mean,
                     "std": cfg.data.std},
            "experiment": config_mod.to_dict(cfg)}


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
    meta = _meta(cfg, names)
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
        train_loader.generator.manual_seed(t.seed * 100_003 + epoch)
        train_loader.dataset.set_epoch_seed(t.seed * 100_003 + epoch)
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
