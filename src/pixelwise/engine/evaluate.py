"""Evaluation: run a model over a dataset and accumulate one dataset-level confusion matrix."""

from __future__ import annotations

import functools
import warnings
from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..metrics import ConfusionMatrix


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX, as oneDNN reports it).

    Without it oneDNN emulates bf16 matrix work, which measured ~100x slower than fp32 on an
    AVX2-only EPYC (0.9 vs 108 GFLOP/s for a 1024^2 matmul), so bf16 autocast would turn a
    3-minute CPU run into hours.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the probe: trust the user
        return True


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` = ``none`` | ``bf16`` | ``fp16`` (fp16 only on CUDA).

    ``bf16`` on a CPU without native bf16 (:func:`cpu_has_fast_bf16`) runs in fp32 instead,
    with a warning: the emulated path is far slower and no more accurate.
    """
    if amp == "none":
        return nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be none, bf16 or fp16, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp fp16 needs a CUDA device; use amp: bf16 on the CPU")
    if amp == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        _warn_slow_bf16()
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@functools.cache
def _warn_slow_bf16() -> None:
    warnings.warn("this CPU has no native bf16 (AVX512-BF16/AMX), where bf16 autocast is emulated and "
                  "~100x slower than fp32; running in fp32 instead (set amp: none to silence this)",
                  RuntimeWarning, stacklevel=3)


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
