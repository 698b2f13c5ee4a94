"""Pyramid Pooling Module (Zhao et al., PSPNet, CVPR 2017, arXiv:1612.01105, Sec. 3.2).

The feature map is average-pooled to ``bins``×``bins`` grids (1, 2, 3, 6), each reduced to
``in_channels / len(bins)`` channels by a 1×1 ConvNormAct, upsampled back and concatenated
with the input: global and sub-region context next to the local features.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvNormAct


class PyramidPooling(nn.Module):
    """``(N, C, H, W)`` -> ``(N, C + len(bins) * C_b, H, W)``; ``C_b = channels`` or, by default
    (PSPNet), ``C // len(bins)``. UPerNet uses a fixed ``channels`` (512)."""

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6), *, norm: str = "batch",
                 channels: int | None = None) -> None:
        super().__init__()
        reduced = channels or in_channels // len(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvNormAct(in_channels, reduced, 1, norm=norm)) for b in bins)
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(stage(x), size=size, mode="bilinear", align_corners=False) for stage in self.stages]
        return torch.cat([x, *pooled], dim=1)
