"""Pyramid Pooling Module (Zhao et al., PSPNet, CVPR 2017, arXiv:1612.01105, Sec. 3.2).

The feature map is average-pooled to ``bins``×``bins`` grids (1, 2, 3, 6), each reduced to
``in_channels / len(bins)`` channels by a 1×1 ConvNormAct, upsampled back and concatenated
with the input: global and sub-region context next to the local features.

The pooling is :class:`AdaptiveAvgPool`, not ``nn.AdaptiveAvgPool2d``: exported to ONNX, the
latter becomes an ``AveragePool`` whose kernel was fixed at the traced size, which gives wrong
answers at other sizes and an out-of-bounds Gather in ONNX Runtime where the map does not
divide by the bins.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvNormAct


def _pool_last(x: Tensor, bins: int) -> Tensor:
    """Average the last axis of ``x`` over ``bins`` regions: region ``i`` is
    ``[floor(i n / bins), ceil((i + 1) n / bins))``, as ``F.adaptive_avg_pool2d`` has it.

    Differences of a cumulative sum at computed indices, on contiguous tensors: no operation
    broadcasts against the axis length or mixes memory layouts, so a dynamic ONNX export keeps
    that length symbolic."""
    n = x.shape[-1]
    i = torch.arange(bins, device=x.device)
    start = torch.div(i * n, bins, rounding_mode="floor")
    end = torch.div((i + 1) * n + bins - 1, bins, rounding_mode="floor")
    dtype = torch.promote_types(x.dtype, torch.float32)
    total = F.pad(torch.cumsum(x.to(dtype), -1), (1, 0)).contiguous()  # total[k]: sum of the first k
    return ((total.index_select(-1, end) - total.index_select(-1, start)) / (end - start).to(dtype)).to(x.dtype)


class AdaptiveAvgPool(nn.Module):
    """Adaptive average pooling to ``bins`` x ``bins``: ``(N, C, H, W)`` -> ``(N, C, bins, bins)``.

    Equal to ``nn.AdaptiveAvgPool2d(bins)`` at every size (up to float summation order), and
    exported to ONNX as ops that follow the input's size (see the module docstring).
    """

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.bins = bins

    def forward(self, x: Tensor) -> Tensor:
        if self.bins == 1:  # global pooling (ReduceMean in ONNX)
            return x.mean((-2, -1), keepdim=True)
        rows = _pool_last(x.transpose(-1, -2).contiguous(), self.bins)  # (N, C, W, bins)
        return _pool_last(rows.transpose(-1, -2).contiguous(), self.bins)

    def extra_repr(self) -> str:
        return f"bins={self.bins}"


class PyramidPooling(nn.Module):
    """``(N, C, H, W)`` -> ``(N, C + len(bins) * C_b, H, W)``; ``C_b = channels`` or, by default
    (PSPNet), ``C // len(bins)``. UPerNet uses a fixed ``channels`` (512).

    ``align_corners`` is that of the bilinear upsampling of the pooled maps (smp: True);
    ``global_norm=False`` gives the 1×1 bin a biased convolution and no norm (smp's PSPNet,
    where batch norm on a 1×1 map fails in training at batch size 1).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), *, norm: str = "batch",
                 channels: int | None = None, align_corners: bool = False, global_norm: bool = True) -> None:
        super().__init__()
        reduced = channels or in_channels // len(bins)
        self.align_corners = align_corners
        self.stages = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool(b),
                          ConvNormAct(in_channels, reduced, 1, norm="none" if b == 1 and not global_norm else norm))
            for b in bins)
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=self.align_corners)
                  for stage in self.stages]
        return torch.cat([x, *pooled], dim=1)
