"""The data loaders of a training run: per-rank shards, per-epoch seeding, optional class
balance, and (in deterministic mode) seeded workers."""

from __future__ import annotations

import random
import signal
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ..config import ExperimentCfg
from ..data import EpochSeeded, build_dataset, check_channels
from ..errors import ConfigError
from ..tasks.base import Task
from .distributed import DistEnv, barrier
from .sampling import SkipFirst, balanced_weights, build_sampler, class_presence

# Multiplies the run seed into a per-epoch seed (a prime, so nearby seeds do not collide).
EPOCH_SEED_STRIDE = 100_003


class Shard(Sampler[int]):
    """Indices ``rank, rank + W, ...`` in order, not padded: validation on ``W`` ranks counts
    every pixel exactly once, so the reduced confusion matrix equals a one-process one."""

    def __init__(self, length: int, *, num_replicas: int, rank: int) -> None:
        self.indices = list(range(rank, length, num_replicas))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def seed_worker(worker_id: int) -> None:
    """Seed NumPy and ``random`` in a loader worker from its torch seed (which the loader
    derives from its generator), so worker-side randomness replays exactly. Workers ignore
    SIGINT: Ctrl-C reaches the whole process group, and a worker that died of it would
    break the loader before the main process saved its checkpoint."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loaders(cfg: ExperimentCfg, task: Task, env: DistEnv, *, out_dir: Path,
                 progress: bool = False) -> tuple[DataLoader, DataLoader, SkipFirst, EpochSeeded]:
    """``(train loader, val loader, train sampler, train dataset)`` of ``task``'s datasets
    (:meth:`pixelwise.tasks.base.Task.datasets`), batched with ``task.collate``.

    ``data.batch_size`` is per process: the global batch is ``batch_size * world_size *
    train.accumulate``. Call ``sampler.set_epoch(epoch, skip=...)``,
    ``dataset.set_epoch_seed(...)`` and ``loader.generator.manual_seed(...)`` before each epoch.
    """
    d, t = cfg.data, cfg.train
    train_ds, val_ds = task.datasets()
    if task.name == "semantic":  # a clear error before step 1, not one inside the first convolution
        check_channels(val_ds, cfg.model.in_channels, split=d.val_split)
    if len(train_ds) < d.batch_size * env.world_size:
        raise ConfigError(f"the training set has {len(train_ds)} samples, fewer than data.batch_size "
                          f"{d.batch_size} x {env.world_size} process(es); lower batch_size or add data")
    weights = None
    if t.balanced_sampling:
        if task.name != "semantic" or cfg.data.multilabel:
            raise ConfigError(f"train.balanced_sampling weighs images by the classes in their label maps, which "
                              f"a {task.name}{' multilabel' if cfg.data.multilabel else ''} task does not have; "
                              f"set it to false")
        cache = out_dir / "class_presence.json"
        if env.is_main:
            presence = class_presence(build_dataset(d, d.train_split, train=False), d.num_classes,
                                      cache=cache, progress=progress)
        barrier(env)
        if not env.is_main:
            presence = class_presence(build_dataset(d, d.train_split, train=False), d.num_classes, cache=cache)
        weights = balanced_weights(presence)
    sampler = build_sampler(train_ds, num_replicas=env.world_size, rank=env.rank,
                            seed=t.seed * EPOCH_SEED_STRIDE, weights=weights)
    common = {"num_workers": d.num_workers, "pin_memory": env.device.type == "cuda",
              "collate_fn": task.collate,
              "persistent_workers": False, "worker_init_fn": seed_worker}
    train = DataLoader(train_ds, batch_size=d.batch_size, sampler=sampler, drop_last=True,
                       generator=torch.Generator(), **common)
    val = DataLoader(val_ds, batch_size=d.batch_size, shuffle=False,
                     sampler=Shard(len(val_ds), num_replicas=env.world_size, rank=env.rank), **common)
    return train, val, sampler, train_ds
