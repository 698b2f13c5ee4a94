"""Evaluation: run a model over a dataset and accumulate one dataset-level confusion matrix."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..metrics import ConfusionMatrix
from ..runtime import autocast


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, num_classes: int, ignore_index: int = 255,
             device: torch.device | str = "cpu", amp: str = "none", channels_last: bool = False,
             progress: bool = True) -> ConfusionMatrix:
    """Predict every batch of ``loader`` (dicts with ``image`` (N,3,H,W), ``mask`` (N,H,W))
    and return the accumulated :class:`ConfusionMatrix` (reduced across processes)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch in tqdm(loader, desc="eval", leave=False, disable=not progress):
        image = batch["image"].to(device, memory_format=memory_format, non_blocking=True)
        with autocast(device, amp):
            logits = model(image)
        cm.update(logits.argmax(1), batch["mask"].to(device))
    cm.all_reduce()
    model.train(was_training)
    return cm
