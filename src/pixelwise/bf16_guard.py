"""Work around oneDNN bf16 convolution-backward bugs on the CPUs and torch builds that have them.

Two classes of bad bf16 convolution backward are known in PyTorch 2.14.1's oneDNN, both on
small feature maps (``benchmarks/repro/onednn_amx_bf16.py`` reproduces them standalone):

- **Padding-only taps** (measured on an AVX512-BF16 AMD EPYC, 2026-12-02): when the padding
  is larger than the map (``H < padding``: a 7x7 convolution padded by 3 on a 1x3 or 2x4
  map, a 5x5 padded by 2 on 1x1 or 1x3), the weight-gradient taps that see only padding
  should be exactly 0 but come back as garbage (uninitialised memory, values up to 1e20),
  for 256 channels and more. FCN's fc6 (7x7, padding 3) on 32x96 crops is such a case: its
  weights are silently corrupted.
- **AMX heap corruption** (measured on an Intel Xeon with AMX, 2026-12-02): the weight
  gradient of a convolution with more than 2048 input channels and fewer than 16 output
  channels (oneDNN's ``brgconv_bwd_w`` AMX kernel) writes out of bounds when it runs on two
  threads or more: ``corrupted double-linked list``/``free(): invalid pointer`` aborts or a
  segfault, at every map size tried (1x3 to 64x64), kernel 1, 3 and 7, NCHW and
  channels_last alike. 2048 input channels and 16 output channels are fine, the input
  gradient is fine, one thread is fine. FCN's score layer (4096 -> a few classes) is such a
  convolution: the report's two-layer module is one.

The workaround runs exactly those convolutions in fp32 (autocast off for that layer only;
the next layer casts back to bf16), so everything else keeps bf16's speed. Their maps
(padding class) or their output channels (AMX class) are tiny, so the fp32 work is small.
Each class is switched on only where a probe shows it: the padding class by a small in-
process check (milliseconds, it cannot crash), the AMX class by one such convolution's
weight gradient on two threads in a child process (it can crash), only on CPUs with AMX,
cached per torch version, CPU model and probe. A torch that has fixed a bug passes its
probe, and the workaround switches itself off. ``PIXELWISE_BF16_GUARD=on|off`` overrides the
probes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import runtime

__all__ = ["GuardRule", "amx_crash_probe", "guard_convs", "guard_rule", "padding_tap_probe"]

# The AMX class, as benchmarks/repro/onednn_amx_bf16.py bounds it on PyTorch 2.14.1: more than
# 2048 input channels (2056 crashed, 2048 did not) and fewer than 16 output channels (15 crashed,
# 16 did not). The rule takes 2048 itself too, a margin that costs nothing on such a narrow layer.
AMX_WIDE_IN = 2048
AMX_NARROW_OUT = 16

# Two threads at least: on one thread the kernel partitions differently and does not crash.
_AMX_PROBE = """
import torch
torch.set_num_threads(max(2, torch.get_num_threads()))
conv = torch.nn.Conv2d(4096, 2, 1)
x = torch.randn(2, 4096, 8, 8)
for _ in range(3):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().sum().backward()
print("PROBE-OK")
"""


@dataclass(frozen=True)
class GuardRule:
    """Which convolutions run fp32 under CPU bf16 autocast.

    Attributes:
        padding_taps: a convolution whose padding exceeds its input's height or width.
        wide_to_narrow: a convolution with at least ``AMX_WIDE_IN`` input channels per group and
            fewer than ``AMX_NARROW_OUT`` output channels, whatever its map size.
    """

    padding_taps: bool = False
    wide_to_narrow: bool = False

    @property
    def active(self) -> bool:
        return self.padding_taps or self.wide_to_narrow

    def applies(self, conv: nn.Conv2d, x: torch.Tensor) -> bool:
        """Whether ``conv`` on ``x`` ``(N, C, H, W)`` must run fp32."""
        h, w = x.shape[-2], x.shape[-1]
        if (self.wide_to_narrow and conv.in_channels // conv.groups >= AMX_WIDE_IN
                and conv.out_channels < AMX_NARROW_OUT):
            return True
        if self.padding_taps and isinstance(conv.padding, tuple):  # "same"/"valid" strings: no padding rule
            return min(h, w) < max(conv.padding)
        return False

    def describe(self) -> str:
        parts = (["padding larger than the map"] if self.padding_taps else []) + (
            [f">= {AMX_WIDE_IN} input and < {AMX_NARROW_OUT} output channels"] if self.wide_to_narrow else [])
        return " or ".join(parts) or "none"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_has_amx() -> bool:
    """AMX in the CPU flags and not switched off for oneDNN by ``ONEDNN_MAX_CPU_ISA``."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).upper()
    if isa and "AMX" not in isa and isa != "ALL":
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            return any(line.startswith("flags") and "amx_tile" in line.split() for line in fh)
    except OSError:
        return False


@functools.cache
def padding_tap_probe() -> bool:
    """True when bf16 weight gradients of padding-only taps come back non-zero (the bug)."""
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(256, 256, 7, padding=3)
    x = torch.randn(2, 256, 1, 3, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().square().mean().backward()
    # Kernel rows 0 and 6 see only padding on a one-row map: their gradient is exactly 0.
    return bool(conv.weight.grad[:, :, [0, 6]].abs().max() > 0)


def _cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixelwise"
    key = hashlib.sha1(f"{torch.__version__}|{_cpu_model()}|{os.environ.get('ONEDNN_MAX_CPU_ISA', '')}|"
                       f"{_AMX_PROBE}".encode())  # a changed probe must not reuse an old verdict
    return root / f"onednn-amx-probe-{key.hexdigest()[:12]}.json"


@functools.cache
def amx_crash_probe() -> bool:
    """True when the reported AMX bf16 backward crashes (in a child process) on this machine."""
    if not _cpu_has_amx():
        return False
    cache = _cache_file()
    try:
        return bool(json.loads(cache.read_text())["crashes"])
    except (OSError, ValueError, KeyError):
        pass
    env = {**os.environ, "MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165", "OMP_NUM_THREADS": "2"}
    try:
        proc = subprocess.run([sys.executable, "-c", _AMX_PROBE], env=env, capture_output=True, text=True,
                              timeout=120)
        crashes = proc.returncode != 0 or "PROBE-OK" not in proc.stdout
    except subprocess.TimeoutExpired:
        crashes = True
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"crashes": crashes, "torch": torch.__version__, "cpu": _cpu_model()}))
        tmp.replace(cache)
    except OSError:
        pass  # a read-only home: probe again next time
    return crashes


def guard_rule() -> GuardRule:
    """The rule for this process's CPU and torch, from the probes or ``PIXELWISE_BF16_GUARD``."""
    setting = os.environ.get("PIXELWISE_BF16_GUARD", "auto").lower()
    if setting == "off":
        return GuardRule()
    if setting == "on":
        return GuardRule(padding_taps=True, wide_to_narrow=True)
    if setting != "auto":
        raise ValueError(f"PIXELWISE_BF16_GUARD must be auto, on or off, got {setting!r}")
    return GuardRule(padding_taps=padding_tap_probe(), wide_to_narrow=amx_crash_probe())


def _guarded_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16 and self._bf16_guard.applies(self, x)):
        with torch.autocast("cpu", enabled=False):
            return type(self).forward(self, x.float())
    return type(self).forward(self, x)


def guard_convs(model: nn.Module, rule: GuardRule) -> int:
    """Make the 2D convolutions of ``model`` run fp32 where ``rule`` applies; returns how many
    convolutions can be affected. Weights, state dict and eval/export paths are unchanged (the
    check only acts under CPU bf16 autocast)."""
    if not rule.active:
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and "_bf16_guard" not in module.__dict__:
            module._bf16_guard = rule
            module.forward = types.MethodType(_guarded_forward, module)
            count += 1
    return count


def guard_for_training(model: nn.Module, device: torch.device, amp: str) -> GuardRule:
    """Apply :func:`guard_rule` to ``model`` when it will train under CPU bf16; warns once what it does."""
    if device.type != "cpu" or amp != "bf16" or not runtime.cpu_has_fast_bf16():  # emulated bf16 runs fp32 anyway
        return GuardRule()
    rule = guard_rule()
    if guard_convs(model, rule):
        warnings.warn(f"oneDNN bf16 convolution backward is wrong on this CPU/torch ({_cpu_model()}, torch "
                      f"{torch.__version__}) for {rule.describe()}; those convolutions run in fp32 "
                      f"(benchmarks/repro/onednn_amx_bf16.py shows the cases; PIXELWISE_BF16_GUARD=off disables)",
                      RuntimeWarning, stacklevel=2)
    return rule
