"""The Task protocol: what the one training loop (:mod:`pixelwise.train.loop`) asks of a task.

A task is everything that differs between, say, semantic segmentation and Mask R-CNN, and
nothing else: how to build the network, the datasets and how to batch them, the loss of one
micro-batch (its named terms, which the loop logs as ``loss_<term>``), evaluation (its score
columns and the score that picks ``best/``), what a saved model folder records, and the
predictor that turns images into results with a trained model (:meth:`Task.predictor`). The
loop owns the rest: processes (DDP), accumulation, AMP, EMA, schedules, checkpoints, resume,
Ctrl-C, the NaN guard and logging.

Predictors live above this floor (:mod:`pixelwise.infer`), so a task names its predictor by
its own ``name`` in ``registry.PREDICTORS`` rather than importing it; ``import pixelwise``
registers them (``semantic``: :class:`~pixelwise.infer.segmenter.Segmenter`, ``instance``:
:class:`~pixelwise.infer.instance_predictor.InstancePredictor`).

Adding a task is one file with a class that has these members, registered with
``@register(TASKS, "name")`` (:mod:`pixelwise.registry`), and an entry in
:func:`pixelwise.tasks.select.build_task`'s ``auto`` rule if it should be picked by model name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from ..registry import EXPORTERS, PREDICTORS


@dataclass
class StepOutput:
    """The loss of one micro-batch.

    Attributes:
        loss: scalar float32 tensor, the sum the optimiser minimises.
        terms: its named parts as floats (logged as ``loss_<name>``).
        images: how many images the micro-batch held (for images/s).
        logits: ``(N, C, H, W)`` semantic logits, for the adversarial discriminator (None otherwise).
    """

    loss: Tensor
    terms: dict[str, float]
    images: int
    logits: Tensor | None = None


@dataclass
class Evaluation:
    """One validation.

    Attributes:
        scores: the task's score columns (:attr:`Task.score_columns`), floats, for metrics.csv.
        best: the value that picks ``best/`` (higher is better).
        details: everything else worth keeping (per-class scores), saved in ``best/config.json``.
        confusion: a :class:`~pixelwise.metrics.ConfusionMatrix` for the plots, if the task has one.
    """

    scores: dict[str, float]
    best: float
    details: dict[str, Any] = field(default_factory=dict)
    confusion: Any = None


class Task(Protocol):
    """What the loop needs from a task; see the module docstring."""

    name: str  # "semantic", "instance"
    best_key: str  # trainer state key of the best score: "best_miou", "best_mask_ap"
    score_columns: tuple[str, ...]  # metrics.csv columns, present in every row
    collate: Callable  # batches for the loaders

    def build_model(self) -> nn.Module:
        """The network, with a ``.config`` so :func:`pixelwise.hub.save_model` can save it."""

    def dataset(self, split: str, *, train: bool) -> Dataset:
        """One split, augmented when ``train``."""

    def datasets(self) -> tuple[Dataset, Dataset]:
        """``(train, val)``; the train set's transform is re-seeded per (epoch, index)
        (:class:`pixelwise.data.EpochSeeded`)."""

    def forward(self, model: nn.Module, batch: Any, *, device: torch.device, amp: str,
                memory_format: torch.memory_format) -> StepOutput:
        """Move ``batch`` to ``device``, run ``model`` (training mode) under autocast, return the loss."""

    def batch_names(self, batch: Any) -> list[str]:
        """The sample names of a batch, for error messages."""

    def evaluate(self, model: nn.Module, loader: DataLoader, *, device: torch.device, amp: str,
                 channels_last: bool, progress: bool) -> Evaluation:
        """Score ``model`` on ``loader`` (every process its shard; results reduced across processes)."""

    def model_meta(self) -> dict[str, Any]:
        """What a saved model needs besides its weights: task, class names, preprocessing, mode."""

    def class_names(self) -> list[str]:
        """One name per class."""

    def predictor(self, source: str | os.PathLike | nn.Module, **options: Any) -> Any:
        """The inference object of this task for a saved model folder, or for a model in memory
        (built by :meth:`build_model`, e.g. just trained) described by :meth:`model_meta`;
        ``options`` (``device``, ``amp``, ...) go to it. See :func:`build_predictor`."""

    def exporter(self) -> Callable[..., Any]:
        """This task's ONNX export function (see :func:`build_exporter`)."""


def build_exporter(task: str) -> Callable[..., Any]:
    """``registry.EXPORTERS[task]``: the function that writes this task's ONNX file,
    ``fn(model, path, *, height, width, ...)``, checked against PyTorch as it writes."""
    if task not in EXPORTERS:
        raise ConfigError(f"no exporter is registered for task {task!r} (registered: "
                          f"{', '.join(sorted(EXPORTERS)) or 'none'}); `import pixelwise.export` registers the "
                          f"built-in ones")
    return EXPORTERS[task]


def build_predictor(task: str, source: str | os.PathLike | nn.Module, meta: Callable[[], dict[str, Any]],
                    **options: Any) -> Any:
    """``registry.PREDICTORS[task]`` for ``source``: ``from_pretrained(folder, **options)``, or
    ``from_model(model, meta(), **options)`` for an ``nn.Module`` (``meta`` is called only then)."""
    if task not in PREDICTORS:
        raise ConfigError(f"no predictor is registered for task {task!r} (registered: "
                          f"{', '.join(sorted(PREDICTORS)) or 'none'}); `import pixelwise` registers the built-in ones")
    predictor = PREDICTORS[task]
    if isinstance(source, nn.Module):
        return predictor.from_model(source, meta(), **options)
    return predictor.from_pretrained(source, **options)
