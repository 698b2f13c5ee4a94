"""The loop's last step: train on what is labelled, and use the new model if it is better.

:func:`retrain` (run as a background :class:`~pixelwise.annotate.jobs.Job`):

1. splits the labelled images into a training part and a held-out part
   (:func:`holdout_split`: by a hash of the name, so most images keep their side from one
   round to the next as more are labelled);
2. writes them in the layout the ``folder`` reader reads, with a config
   (``.pixelwise-annotate/retrain/round-NNN/data/{train,holdout}``, ``config.yaml``);
3. runs ``pixelwise train`` on it in a subprocess (the server stays responsive, and a
   crash of the trainer cannot take it down), following ``log.csv`` for the page's progress;
4. scores the new model and the current one on the held-out images with the same code
   (mean IoU over the project's classes) and swaps the new one in when it scores higher,
   or when there was none. ``model.json`` records the swap, so a restarted server without
   ``--model`` proposes with the retrained model.

The trainer validates only once, after its last step (``val_every`` larger than the run),
so the new model is the last one and was not picked on the held-out images it is judged on.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from .. import config as config_mod
from ..errors import ConfigError, PixelwiseError
from ..infer.segmenter import Segmenter
from ..metrics import ConfusionMatrix
from .exports import export_folder, folder_config
from .jobs import Job, ModelSlot
from .model_proposals import ModelProposer
from .store import AnnotationStore

__all__ = ["retrain_options", "holdout_split", "holdout_miou", "retrain", "MODEL_FILE"]

MODEL_FILE = "model.json"
_ALLOWED = {"steps", "batch_size", "lr", "model", "crop_size", "augment", "device", "holdout_fraction", "amp"}


def holdout_split(names: list[str], *, fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """``(train, held out)``: the ``max(1, round(fraction * n))`` names with the smallest CRC-32
    hash are held out (at least one image stays in each part)."""
    if len(names) < 2:
        raise PixelwiseError(f"retraining needs at least 2 labelled images (one to train on, one to judge the new "
                             f"model on); {len(names)} labelled so far")
    count = min(len(names) - 1, max(1, round(fraction * len(names))))
    ranked = sorted(names, key=lambda n: (zlib.crc32(n.encode("utf-8")), n))
    held = set(ranked[:count])
    return [n for n in names if n not in held], [n for n in names if n in held]


def holdout_miou(proposer: ModelProposer, store: AnnotationStore, names: list[str]) -> float:
    """Mean IoU of ``proposer``'s predictions on ``names`` against their saved masks, over the
    project's classes present in either."""
    cm = ConfusionMatrix(num_classes=len(store.classes), ignore_index=255)
    for name in names:
        labels, _ = proposer.predict(store.image(name), f"holdout:{name}")
        cm.update(torch.from_numpy(labels.astype(np.int64))[None],
                  torch.from_numpy(store.read_mask(name).astype(np.int64))[None])
    return cm.miou()


def retrain_options(store: AnnotationStore, given: dict[str, Any], current: ModelProposer | None) -> dict[str, Any]:
    """The options of a round: ``given`` (the request's JSON) over defaults that suit the folder
    (the current model's architecture if it has one); :class:`ConfigError` names a bad one."""
    unknown = sorted(set(given) - _ALLOWED)
    if unknown:
        raise ConfigError(f"retrain options {unknown} are not known; use {sorted(_ALLOWED)}")
    sizes = [Image.open(store.entry(n).path).size for n in store.labelled()]
    small = max((max(s) for s in sizes), default=0) <= 512
    model = {"name": "unet", "args": {"base_channels": 16, "depth": 4, "norm": "batch"}}
    experiment = current.segmenter.config.get("experiment") if current is not None else None
    if isinstance(experiment, dict) and isinstance(experiment.get("model"), dict):
        model = {k: v for k, v in experiment["model"].items() if k in ("name", "encoder", "args", "in_channels")}
        model["encoder_weights"] = None  # the retrain starts from scratch and downloads nothing
    options = {"steps": 300, "batch_size": 8, "lr": 0.003, "model": model, "holdout_fraction": 0.2,
               "crop_size": 256 if not small else 64, "augment": "none" if small else "standard",
               "device": "auto", "amp": "none", **given}
    for key, kind in (("steps", int), ("batch_size", int), ("crop_size", int)):
        if not isinstance(options[key], kind) or isinstance(options[key], bool) or options[key] < 1:
            raise ConfigError(f"retrain option {key}={options[key]!r} must be a positive whole number")
    fraction = options["holdout_fraction"]
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0.0 < fraction < 1.0:
        raise ConfigError(f"retrain option holdout_fraction={fraction!r} must be a fraction between 0 and 1")
    if not isinstance(options["model"], dict) or "name" not in options["model"]:
        raise ConfigError(f"retrain option model={options['model']!r} must be a dict with a 'name' (and 'args')")
    return options


def _kill_with_parent() -> None:
    """In the trainer child: die when the server dies (Linux), so no orphan keeps training."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _last_row(path: Path) -> dict[str, str] | None:
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None
    return rows[-1] if rows else None


def retrain(store: AnnotationStore, slot: ModelSlot, job: Job, options: dict[str, Any], *,
            device: str = "cpu") -> dict[str, Any]:
    """One retrain round (see the module docstring); updates ``job``'s status as it goes."""
    current = slot.get()
    opts = retrain_options(store, options, current)
    train_names, held = holdout_split(store.labelled(), fraction=float(opts["holdout_fraction"]))
    rounds = store.state_dir / "retrain"
    number = 1 + max((int(p.name.split("-")[1]) for p in rounds.glob("round-*") if p.name.split("-")[1].isdigit()),
                     default=0)
    run_dir = rounds / f"round-{number:03d}"
    data_dir, out_dir = run_dir / "data", run_dir / "run"
    steps = int(opts["steps"])
    cfg = folder_config(store, data_dir, train_split="train", val_split="holdout", extra={
        "model": opts["model"],
        "data": {"batch_size": min(int(opts["batch_size"]), len(train_names)), "crop_size": int(opts["crop_size"]),
                 "augment": opts["augment"]},
        "train": {"max_steps": steps, "lr": float(opts["lr"]), "val_every": 10 ** 9, "log_every": max(1, steps // 50),
                  "out_dir": str(out_dir), "device": opts["device"], "amp": opts["amp"], "plots": False},
    })
    job.update(phase="preparing", round=number, step=0, total_steps=steps, train_images=len(train_names),
               holdout_images=len(held))
    export_folder(store, data_dir, splits={"train": train_names, "holdout": held}, config=cfg)
    config_path = run_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    config_mod.load(config_path)  # a bad option fails here, with its dotted name, not in the child

    job.update(phase="training")
    log_path = run_dir / "train.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pixelwise", "train", str(config_path), "--quiet"],
                                stdout=log, stderr=subprocess.STDOUT, cwd=str(run_dir), env=env,
                                preexec_fn=_kill_with_parent if os.name == "posix" else None)
        job.update(pid=proc.pid)
        while proc.poll() is None:
            row = _last_row(out_dir / "log.csv")
            if row:
                job.update(step=int(row["step"]), loss=float(row["loss"]))
            time.sleep(0.5)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        raise PixelwiseError(f"pixelwise train exited with status {proc.returncode}: {' | '.join(tail)} "
                             f"(full log: {log_path})")
    job.update(phase="evaluating", step=steps)
    new_folder = out_dir / "best"
    new = ModelProposer(Segmenter.from_pretrained(new_folder, device=device), store.classes, source=str(new_folder))
    new_miou = holdout_miou(new, store, held)
    old_miou = holdout_miou(current, store, held) if current is not None else None
    swapped = old_miou is None or new_miou > old_miou
    if swapped:
        slot.swap(new)
        store.write_state(MODEL_FILE, {"path": str(new_folder), "round": number, "holdout_miou": new_miou,
                                       "holdout": held})
    return {"phase": "finished", "new_miou": new_miou, "old_miou": old_miou, "swapped": swapped,
            "model": str(new_folder) if swapped else (current.source if current else None), "holdout": held}
