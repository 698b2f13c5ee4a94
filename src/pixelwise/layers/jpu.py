"""Joint Pyramid Upsampling (Wu, Zhang, Huang, Liang & Yu, "FastFCN: Rethinking Dilated
Convolution in the Backbone for Semantic Segmentation", arXiv:1903.11816, Sec. 3, Fig. 4).

What is special here: a dilated backbone computes its last stages at output stride 8,
which is slow and memory-hungry. JPU instead takes the last three stages of an ordinary
backbone (strides 8, 16, 32), brings them to stride 8 and extracts multi-scale context
with parallel dilated *separable* convolutions over the joint features, approximating
what the dilated stages would have produced (the paper casts it as joint upsampling).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .aspp import SeparableConvNormAct
from .conv import ConvNormAct


class JointPyramidUpsampling(nn.Module):
    """``forward(xs)``: three features ``(N, C_i, H/8, W/8)``, ``(N, ., H/16, W/16)``,
    ``(N, ., H/32, W/32)`` (finest first) -> ``(N, len(dilations) * channels, H/8, W/8)``.

    Each input gets a 3×3 ConvNormAct to ``channels``; all are upsampled (bilinear) to the
    finest, concatenated (``3 * channels``) and fed to parallel depthwise-separable 3×3
    convolutions dilated by 1, 2, 4, 8 (each ``3 * channels -> channels``), whose outputs
    are concatenated.

    Args:
        in_channels: channels of the three inputs, finest first.
        channels: C, the width of each branch (512 in the paper).
        dilations: rates of the parallel separable convolutions.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 512, *,
                 dilations: Sequence[int] = (1, 2, 4, 8), norm: str = "batch") -> None:
        super().__init__()
        self.reduce = nn.ModuleList(ConvNormAct(c, channels, 3, norm=norm) for c in in_channels)
        joint = channels * len(in_channels)
        self.dilations = tuple(dilations)
        self.branches = nn.ModuleList(
            SeparableConvNormAct(joint, channels, dilation=d, norm=norm) for d in self.dilations)
        self.out_channels = channels * len(self.dilations)

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        if len(xs) != len(self.reduce):
            raise ValueError(f"JPU built for {len(self.reduce)} inputs got {len(xs)}")
        feats = [reduce(x) for reduce, x in zip(self.reduce, xs)]
        size = feats[0].shape[-2:]
        feats = [f if f.shape[-2:] == size else F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                 for f in feats]
        joint = torch.cat(feats, dim=1)
        return torch.cat([branch(joint) for branch in self.branches], dim=1)
