"""Where and how tensors run: the device, seeding, determinism and autocast per CPU/GPU class.

Everything that training, evaluation and prediction decide about the machine is here, so the
rules are the same for every task: ``auto`` means CUDA when present; ``bf16`` on a CPU
without native bf16 runs fp32 (emulated bf16 is ~100x slower); fp16 needs CUDA; the
deterministic mode restores what it changed when the run ends.
"""

from __future__ import annotations

import functools
import os
import random
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from .errors import ConfigError

__all__ = ["AMP_MODES", "autocast", "cpu_has_fast_bf16", "deterministic", "resolve_device", "seed_everything"]

AMP_MODES = ("none", "bf16", "fp16")


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; a CUDA device that is absent is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but no CUDA device is available; use auto or cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def deterministic(enabled: bool, device: torch.device) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` (and cuDNN's flags) for the block, restored after.

    On the CPU an op without a deterministic kernel is an error. On CUDA some ops a
    segmentation network needs (bilinear-upsampling backward) have none, so there it
    warns instead; ``CUBLAS_WORKSPACE_CONFIG`` makes cuBLAS reproducible.
    """
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = previous[2], previous[3]


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
    if amp not in AMP_MODES:
        raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp fp16 needs a CUDA device; use amp: bf16 on the CPU")
    if amp == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        _warn_slow_bf16()
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def precision_note(device: torch.device, amp: str) -> str:
    """What precision training/inference with ``amp`` actually runs in on ``device``, and why."""
    if amp == "fp16":
        return "fp16 autocast (CUDA)"
    if amp == "bf16" and device.type == "cpu":
        if cpu_has_fast_bf16():
            return "bf16 autocast (this CPU has native bf16: AVX512-BF16/AMX)"
        return "fp32 (amp: bf16 asked, but this CPU has no native bf16; emulated bf16 is ~100x slower)"
    if amp == "bf16":
        return f"bf16 autocast ({device.type})"
    return "fp32 (amp: none)"


@functools.cache
def _warn_slow_bf16() -> None:
    warnings.warn("this CPU has no native bf16 (AVX512-BF16/AMX), where bf16 autocast is emulated and "
                  "~100x slower than fp32; running in fp32 instead (set amp: none to silence this)",
                  RuntimeWarning, stacklevel=3)
