"""Which samples each process reads, in which order: seeded per epoch, sharded across
ranks, optionally class-balanced, and able to start mid-epoch when a run resumes.

The order depends only on ``(seed, epoch)``, never on the number of processes: the
global order is one permutation and rank ``r`` of ``W`` reads positions ``r, r + W, ...``
(the ``DistributedSampler`` convention). So with per-process batch ``B`` the ``W`` ranks
of step ``s`` together read exactly the ``W * B`` samples one process with batch
``W * B`` reads at step ``s``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler
from tqdm import tqdm


class WeightedDistributedSampler(Sampler[int]):
    """``len(weights)`` draws with replacement, probability proportional to ``weights``
    (as ``WeightedRandomSampler``), seeded from ``(seed, epoch)``, sharded like
    ``DistributedSampler``. Call :meth:`set_epoch` before each epoch."""

    def __init__(self, weights: torch.Tensor, *, num_replicas: int = 1, rank: int = 0, seed: int = 0) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.num_samples = -(-len(self.weights) // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.num_samples * self.num_replicas
        order = torch.multinomial(self.weights, total, replacement=True, generator=g).tolist()
        return iter(order[self.rank:total:self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class SkipFirst(Sampler[int]):
    """The indices of ``sampler`` after the first ``skip`` (resume in the middle of an epoch
    without reading the batches already trained on). ``skip`` resets to 0 after one pass."""

    def __init__(self, sampler: Sampler[int]) -> None:
        self.sampler, self.skip = sampler, 0

    def set_epoch(self, epoch: int, *, skip: int = 0) -> None:
        self.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        indices = list(self.sampler)[self.skip:]
        self.skip = 0
        return iter(indices)

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def class_presence(dataset: Dataset, num_classes: int, *, cache: Path | None = None,
                   progress: bool = False) -> torch.Tensor:
    """``(N, K)`` bool: does sample ``i``'s mask contain class ``k``. Reads every mask once;
    with ``cache`` the table is stored as JSON beside the run and reused when its length
    and class count still match."""
    if cache is not None and cache.is_file():
        stored = json.loads(cache.read_text())
        if len(stored) == len(dataset) and all(len(r) == num_classes for r in stored):
            return torch.tensor(stored, dtype=torch.bool)
    rows = []
    for i in tqdm(range(len(dataset)), desc="class presence", disable=not progress, leave=False):
        mask = torch.as_tensor(dataset[i]["mask"]).long().flatten()
        mask = mask[(mask >= 0) & (mask < num_classes)]
        rows.append(torch.bincount(mask, minlength=num_classes)[:num_classes] > 0)
    table = torch.stack(rows) if rows else torch.zeros(0, num_classes, dtype=torch.bool)
    if cache is not None:
        tmp = cache.with_name(f".{cache.name}.tmp")
        tmp.write_text(json.dumps(table.int().tolist()))
        tmp.replace(cache)
    return table


def balanced_weights(presence: torch.Tensor) -> torch.Tensor:
    """Per-sample weight ``max over present classes k of 1 / f_k``, ``f_k`` the fraction of
    samples containing ``k`` (the repeat-factor idea of Gupta et al. 2019, LVIS, without the
    threshold): an image with a rare class is drawn as often as that class needs. A sample
    with no labelled pixel gets the smallest weight of the others."""
    freq = presence.double().mean(dim=0)
    inv = torch.where(freq > 0, 1.0 / freq.clamp_min(1e-12), torch.zeros_like(freq))
    weights = (presence.double() * inv).amax(dim=1)
    positive = weights[weights > 0]
    floor = positive.min() if len(positive) else torch.tensor(1.0, dtype=torch.float64)
    return torch.where(weights > 0, weights, floor)


def build_sampler(dataset: Dataset, *, num_replicas: int, rank: int, seed: int,
                  weights: torch.Tensor | None = None) -> SkipFirst:
    """Shuffled ``DistributedSampler`` (or the weighted one) behind a :class:`SkipFirst`."""
    if weights is not None:
        inner: Sampler[int] = WeightedDistributedSampler(weights, num_replicas=num_replicas, rank=rank, seed=seed)
    else:
        inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
    return SkipFirst(inner)
