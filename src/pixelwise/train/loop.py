"""The training loop, the only one: every task (:mod:`pixelwise.tasks`) trains here. It reads
top to bottom: processes, data, model, optimiser, schedule, then epochs of steps with
validation and checkpoints. What differs per task (model, datasets, the loss of a step and
its named terms, evaluation, saved metadata) comes from the task object; everything else
(DDP, accumulation, AMP, EMA, schedules, exact resume, Ctrl-C save, the NaN guard, logs
and plots) is here, once. Validation and ``last/`` come per epoch (``val_every``) or every N
steps (``val_every_steps``, ``save_every_steps``: iteration-based schedules), both through
``after_step``. A killed run resumes from ``out_dir/last``, mid-epoch if it was saved there;
a run stopped by SIGINT/SIGTERM first saves the step it reached.

One step is one optimiser update over ``train.accumulate`` micro-batches of
``data.batch_size`` images on each of the ``world_size`` processes (``torchrun``).
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .. import config as config_mod
from ..bf16_guard import guard_for_training
from ..config import ExperimentCfg
from ..errors import ConfigError, TrainingError
from ..hub import save_model
from ..runtime import deterministic, precision_note, seed_everything
from ..tasks.base import Task
from ..tasks.select import build_task
from . import distributed as dist_mod
from .adversarial import AdversarialTrainer
from .checkpoint import load_train_state, remove_stale_temporaries, save_train_state
from .ema import ModelEMA
from .guards import check_finite, nonfinite_state
from .interrupt import StopRequest, TrainingInterrupted
from .loaders import EPOCH_SEED_STRIDE, make_loaders
from .logging import RunLogger
from .optim import build_optimizer, set_encoder_frozen
from .run_dir import check_fresh
from .schedule import make_schedule

__all__ = ["train"]


def _check_cfg(cfg: ExperimentCfg, device: torch.device) -> None:
    t = cfg.train
    if t.accumulate < 1:
        raise ConfigError(f"train.accumulate must be >= 1 (micro-batches per step), got {t.accumulate}")
    if t.amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp is fp16 but training runs on the CPU; use amp: bf16 (or none) there")
    if t.amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"train.amp must be none, bf16 or fp16, got {t.amp!r}")
    if t.early_stop_patience is not None and t.early_stop_patience < 1:
        raise ConfigError(f"train.early_stop_patience must be >= 1 or null, got {t.early_stop_patience}")


def _every(n: int, unit: str) -> str:
    return f"every {unit}" if n == 1 else f"every {n} {unit}s"


_PERCENT = {"miou": "mIoU", "pixel_accuracy": "pixel acc", "mean_dice": "mDice"}


def format_record(record: dict[str, Any]) -> str:
    """One validation record for people: scores in percent, as ``pixelwise eval`` prints them."""
    parts = []
    for key, value in record.items():
        if value is None:
            continue
        if key in _PERCENT and isinstance(value, float):
            parts.append(f"{_PERCENT[key]} {100 * value:.2f}%")
        else:
            parts.append(f"{key} {value:.4f}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts)


def train(cfg: ExperimentCfg, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          task: Task | None = None) -> dict[str, Any]:
    """Train ``cfg`` with its task (:func:`pixelwise.tasks.select.build_task`); returns the trainer
    state (step, epoch, the task's best score: ``best_miou`` or ``best_mask_ap``, history).

    Writes to ``cfg.train.out_dir`` (rank 0 only): ``config.yaml``, ``log.csv`` (per
    ``log_every`` steps: ``loss``, each named term as ``loss_<term>``, ``lr``, ``images_per_s``),
    ``metrics.csv`` (per epoch, or per validation with ``val_every_steps``; every row has every
    score column, empty between validations), ``tensorboard/``, ``last/`` (resumable: every epoch
    or every ``save_every_steps`` steps, at the last step, and on SIGINT/SIGTERM), ``best/``
    (highest validation score) and,
    at the end, ``curves.png``, ``confusion.png``, ``class_iou.png``. With ``resume=True``
    every process continues from ``last/``, mid-epoch if that is where it stopped, and ends
    with the same weights as an uninterrupted run. Without it, an ``out_dir`` that already
    holds a run is refused unless ``overwrite=True`` (:mod:`pixelwise.train.run_dir`). ``task``
    replaces the config's task (a recipe passes its own object with the
    :class:`~pixelwise.tasks.base.Task` members).
    """
    env = dist_mod.setup(cfg.train.device)
    if not resume:
        check_fresh(cfg.train.out_dir, overwrite=overwrite, clear=env.is_main)
    logger = RunLogger(Path(cfg.train.out_dir), enabled=env.is_main, tensorboard=cfg.train.tensorboard)
    try:
        with deterministic(cfg.train.deterministic, env.device), StopRequest() as stop:
            return _train(cfg, task if task is not None else build_task(cfg), env, stop, logger, resume=resume,
                          progress=progress and env.is_main)
    finally:
        logger.close()  # also when training stops with an error
        dist_mod.cleanup(env)


def _train(cfg: ExperimentCfg, task: Task, env: dist_mod.DistEnv, stop: StopRequest, logger: RunLogger, *,
           resume: bool, progress: bool) -> dict[str, Any]:
    t, device = cfg.train, env.device
    _check_cfg(cfg, device)
    out = Path(t.out_dir)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)  # left by a process killed while writing a checkpoint
    dist_mod.barrier(env)
    seed_everything(t.seed)

    # Data: each process reads its shard of one global, per-epoch seeded order.
    train_loader, val_loader, sampler, train_ds = make_loaders(cfg, task, env, out_dir=out, progress=progress)
    steps_per_epoch = len(train_loader) // t.accumulate
    if steps_per_epoch < 1:
        raise ConfigError(f"an epoch has {len(train_loader)} batch(es) per process, fewer than train.accumulate "
                          f"{t.accumulate}; lower accumulate or data.batch_size")
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    epochs = math.ceil(total_steps / steps_per_epoch)
    used = steps_per_epoch * t.accumulate * cfg.data.batch_size * env.world_size

    # Model (raw: what is saved and averaged), optimiser, schedule, and the optional extras.
    memory_format = torch.channels_last if t.channels_last else torch.contiguous_format
    raw = dist_mod.convert_sync_bn(env, task.build_model(), enabled=t.sync_bn)
    raw = raw.to(device, memory_format=memory_format)
    guard_for_training(raw, device, t.amp)  # oneDNN bf16 backward bugs on small maps (bf16_guard.py)
    optimizer = build_optimizer(cfg, raw)
    lr_factor = make_schedule(t.schedule, total_steps=total_steps, warmup_steps=t.warmup_steps, power=t.poly_power)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    scaler = torch.amp.GradScaler("cuda", enabled=t.amp == "fp16")
    adv = None
    if t.adversarial is not None:
        if task.name != "semantic":
            raise ConfigError(f"train.adversarial trains a label-map discriminator, a semantic model's; this is a "
                              f"{task.name} task: remove train.adversarial")
        adv = AdversarialTrainer(t.adversarial, num_classes=cfg.data.num_classes, in_channels=cfg.model.in_channels,
                                 ignore_index=cfg.data.ignore_index, device=device, env=env)
    meta = task.model_meta()
    best_key = task.best_key
    if progress:
        params = sum(p.numel() for p in raw.parameters())
        trainable = sum(p.numel() for p in raw.parameters() if p.requires_grad)
        dropped = len(train_ds) - used
        tqdm.write(f"data: {len(train_ds)} training images ({cfg.data.train_split!r}), {len(val_loader.dataset)} "
                   f"validation ({cfg.data.val_split!r}); batch {cfg.data.batch_size} x {env.world_size} process(es) "
                   f"x accumulate {t.accumulate}: {steps_per_epoch} steps per epoch, {total_steps} steps in "
                   f"{epochs} epoch(s)" + (f"; the last {dropped} image(s) of each epoch's order are left out "
                                           f"(drop_last: a different {dropped} each epoch)" if dropped > 0 else ""))
        threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
        tqdm.write(f"model: {cfg.model.name}, {params:,} parameters ({trainable:,} trainable); device "
                   f"{device}{threads}; precision {precision_note(device, t.amp)}")
        val_when = _every(t.val_every_steps, "step") if t.val_every_steps else _every(t.val_every, "epoch")
        save_when = _every(t.save_every_steps, "step") if t.save_every_steps else "every epoch"
        tqdm.write(f"validation {val_when} and at step {total_steps}; last/ {save_when}, at step {total_steps} "
                   f"and on Ctrl-C/SIGTERM")

    state: dict[str, Any] = {"step": 0, "epoch": 0, "epoch_step": 0, best_key: -1.0, "stale": 0, "due": False,
                             "history": []}
    if resume:
        if not (out / "last").exists() and not (out / ".last.old").exists():
            raise ConfigError(f"--resume: no checkpoint in {str(out / 'last')!r}; run without --resume to start")
        state, saved = load_train_state(out / "last", model=raw, optimizer=optimizer, scheduler=scheduler)
        # Keys older checkpoints lack; their only mid-epoch saves were stops, before the step's epoch end.
        state = {"epoch_step": 0, "stale": 0, "due": state.get("epoch_step", 0) > 0, **state}
        logger.resumed(state["step"])
    else:
        saved = {}
        if env.is_main:
            config_mod.save(cfg, out / "config.yaml")
        logger.fresh()
    # Built after loading, so a checkpoint written without EMA starts the average from its weights.
    ema = ModelEMA(raw, decay=t.ema_decay) if t.ema_decay is not None else None
    for name, part in (("scaler", scaler), ("ema", ema), ("adversarial", adv)):
        if part is not None and name in saved:
            part.load_state_dict(saved[name])

    def extras() -> dict[str, Any]:
        parts = {"scaler": scaler if scaler.is_enabled() else None, "ema": ema, "adversarial": adv}
        return {name: part.state_dict() for name, part in parts.items() if part is not None}

    def ensure_finite(where: str, step: int, epoch: int) -> None:
        # Every rank checks its own replica; all stop together if any holds NaN/inf.
        bad = nonfinite_state(raw) + ([f"ema.{n}" for n in nonfinite_state(ema.module)] if ema is not None else [])
        if dist_mod.any_across(env, bool(bad)):
            check_finite(raw, step=step, epoch=epoch, where=where, last=str(out / "last"),
                         bad=bad or ["(on another process)"])

    def save_last() -> None:
        ensure_finite("before saving last/", state["step"], state["epoch"])
        if env.is_main:
            save_train_state(out / "last", model=raw, optimizer=optimizer, scheduler=scheduler, trainer=state,
                             meta=meta, extras=extras())
        dist_mod.barrier(env)

    def wrap() -> nn.Module:
        # DDP syncs only the parameters that require grad when it is built: re-wrap on unfreeze.
        wrapped = dist_mod.wrap_model(env, raw)
        return torch.compile(wrapped, backend=t.compile_backend) if t.compile else wrapped

    step = state["step"]
    frozen = step < t.freeze_encoder_steps
    if frozen:
        set_encoder_frozen(raw, True)
    model = wrap()
    ddp = isinstance(model, nn.parallel.DistributedDataParallel) or isinstance(
        getattr(model, "_orig_mod", None), nn.parallel.DistributedDataParallel)
    cm = None
    loss_value = state.get("train_loss", float("nan"))

    def after_step(epoch: int, done: int) -> bool:
        """What is due after step ``step``, the ``done``-th of epoch ``epoch`` (0-based): validation
        (every ``val_every_steps`` steps, or at the end of every ``val_every``-th epoch, and at the
        last step), its ``metrics.csv`` row, ``best/``, early stop, and ``last/`` (every
        ``save_every_steps`` steps, or at the end of every epoch, and at the last step). Mid-epoch
        and epoch-end points run this one function; returns whether to stop early."""
        nonlocal cm
        final = step >= total_steps
        epoch_end = done >= steps_per_epoch or final
        if t.val_every_steps is not None:
            validate = step % t.val_every_steps == 0 or final
            row = validate  # an iteration-based run has a row per validation, not per (tiny) epoch
        else:
            validate = epoch_end and ((epoch + 1) % t.val_every == 0 or final)
            row = epoch_end
        if t.save_every_steps is not None:
            save = step % t.save_every_steps == 0 or final
        else:
            save = epoch_end
        stop_early = False
        if row:
            record: dict[str, Any] = {"epoch": epoch + 1, "step": step, "train_loss": round(loss_value, 6)}
            # Every row has every score column (empty between validations): metrics.csv keeps one header.
            record.update(dict.fromkeys(task.score_columns))
            if validate:
                judged = ema.module if ema is not None else raw
                result = task.evaluate(judged, val_loader, device=device, amp=t.amp, channels_last=t.channels_last,
                                       progress=progress)
                cm = result.confusion if result.confusion is not None else cm
                record.update(result.scores)
                if result.best > state[best_key]:
                    state.update({best_key: result.best, "stale": 0})
                    ensure_finite("before saving best/", step, epoch + 1)
                    if env.is_main:
                        save_model(judged, out / "best", {**meta, "scores": result.details, "step": step})
                else:
                    state["stale"] += 1
                stop_early = t.early_stop_patience is not None and state["stale"] >= t.early_stop_patience
            logger.metrics(record)
            state["history"].append(record)
            if progress:
                tqdm.write(format_record(record))
        # `epoch` counts finished epochs, `epoch_step` the steps taken in the next one (resume point).
        position = (epoch + 1, 0) if epoch_end else (epoch, done)
        state.update(step=step, epoch=position[0], epoch_step=position[1], stopped_early=stop_early, due=False,
                     train_loss=loss_value)
        if save or stop_early:
            save_last()
        if stop_early and progress:
            tqdm.write(f"early stop: no better validation {best_key[5:]} for {state['stale']} validation(s)")
        return stop_early

    # One bar for the whole run (with its ETA), not one per epoch: epochs can be 1-3 steps.
    bar = tqdm(total=total_steps, initial=step, desc="train", disable=not progress, dynamic_ncols=True)
    # A run stopped by a signal saved before that step's validation / checkpoint: do them now.
    stop_early = after_step(state["epoch"], state["epoch_step"]) if state["due"] else False
    for epoch in range(state["epoch"], epochs):
        if stop_early or step >= total_steps:
            break
        first = state["epoch_step"] if epoch == state["epoch"] else 0  # steps this epoch already took
        # The order, the augmentations and worker seeds depend on (seed, epoch) only, so a
        # resumed run replays them; the batches before `first` are skipped unread.
        epoch_seed = t.seed * EPOCH_SEED_STRIDE + epoch
        sampler.set_epoch(epoch, skip=first * t.accumulate * cfg.data.batch_size)
        train_ds.set_epoch_seed(epoch_seed)
        train_loader.generator.manual_seed(epoch_seed)
        model.train()
        batches = iter(train_loader)
        bar.set_description(f"epoch {epoch + 1}/{epochs}")
        seen, tic = 0, time.perf_counter()
        for epoch_step in range(first, steps_per_epoch):
            if frozen and step >= t.freeze_encoder_steps:
                frozen = False
                set_encoder_frozen(raw, False)
                model = wrap()
                model.train()
            optimizer.zero_grad(set_to_none=True)
            losses: list[float] = []
            terms: dict[str, list[float]] = {}
            for micro in range(t.accumulate):
                batch = next(batches)
                # Only the last micro-batch of a step all-reduces the gradients.
                sync = nullcontext() if (not ddp or micro == t.accumulate - 1) else model.no_sync()
                with sync:
                    out_step = task.forward(model, batch, device=device, amp=t.amp, memory_format=memory_format)
                    loss = out_step.loss
                    if adv is not None:
                        image = batch["image"].to(device, memory_format=memory_format)
                        target = batch["mask"].to(device)
                        generator = adv.generator_loss(image, out_step.logits, target)
                        loss = loss + generator
                        out_step.terms["adversarial"] = float(generator.detach())
                    if dist_mod.any_across(env, not bool(torch.isfinite(loss))):
                        raise TrainingError(
                            f"loss is {loss.item()} at step {step} (epoch {epoch + 1}), batch {task.batch_names(batch)} "
                            f"(terms { {k: round(v, 4) for k, v in out_step.terms.items()} }); nothing was saved from "
                            f"this step and {str(out / 'last')!r} holds the last good state. Fixes: lower train.lr, set "
                            f"train.grad_clip (e.g. 1.0), use train.amp: none, and check those files for NaN/inf or "
                            f"wrong labels")
                    scaler.scale(loss / t.accumulate).backward()
                if adv is not None:
                    adv.discriminator_step(image, out_step.logits, target)
                losses.append(loss.item())
                for name, value in out_step.terms.items():
                    terms.setdefault(name, []).append(value)
                seen += out_step.images
            if t.grad_clip is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(raw.parameters(), t.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                ema.update(raw)
            step += 1
            loss_value = sum(losses) / len(losses)
            speed = seen * env.world_size / max(time.perf_counter() - tic, 1e-9)
            lr = t.lr * lr_factor(step)  # the decoder's LR for the next step (the encoder's may be scaled)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", img_s=f"{speed:.1f}")
            if step % t.log_every == 0 or step == total_steps:
                ensure_finite("at the check every train.log_every steps", step, epoch + 1)
                row = {"step": step, "epoch": epoch + 1, "loss": round(dist_mod.mean_across(env, loss_value), 6)}
                for name, values in sorted(terms.items()):
                    row[f"loss_{name}"] = round(dist_mod.mean_across(env, sum(values) / len(values)), 6)
                logger.step({**row, "lr": lr, "images_per_s": round(speed, 2)})
            if dist_mod.any_across(env, stop.requested):
                # Save first (a scheduler's SIGTERM grace is short); a resume runs what was due here.
                bar.close()
                state.update(step=step, epoch=epoch, epoch_step=epoch_step + 1, due=True, train_loss=loss_value)
                save_last()
                raise TrainingInterrupted(f"{stop.signal_name or 'stop'} at step {step}; saved {str(out / 'last')!r}")
            paused = time.perf_counter()
            stop_early = after_step(epoch, epoch_step + 1)
            tic += time.perf_counter() - paused  # images/s counts training time, not validation or saving
            if stop_early or step >= total_steps:
                break
    bar.close()
    if env.is_main:
        (out / "history.json").write_text(json.dumps(state["history"], indent=2))
        if t.plots:
            logger.plots(confusion=cm, class_names=task.class_names() if cm is not None else [])
    return state
