"""Atrous Spatial Pyramid Pooling (Chen et al., DeepLab v3, arXiv:1706.05587, Sec. 3.3).

Parallel branches look at the same features with different fields of view: a 1×1
convolution, 3×3 convolutions dilated by each rate, and image-level pooling (global
average -> 1×1 conv -> broadcast back), concatenated and projected by a 1×1 convolution.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import ConvNormAct, make_norm


SEPARABLE_INNER = ("norm", "none", "norm_act")


class SeparableConvNormAct(nn.Sequential):
    """Depthwise 3×3 (dilated) convolution + pointwise 1×1, each followed by norm (and ReLU at
    the end): the atrous separable convolution of DeepLab v3+ (Chen et al. 2018, Sec. 3.2).

    ``inner`` is what sits between the two convolutions: ``"norm"`` (the paper's code),
    ``"none"`` (smp's ``SeparableConv2d``) or ``"norm_act"`` (norm + ReLU, MMSegmentation's
    ``DepthwiseSeparableConvModule``; then module 1 is ``Sequential(norm, ReLU)``).
    """

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1, norm: str = "batch",
                 inner: str = "norm") -> None:
        if inner not in SEPARABLE_INNER:
            raise ValueError(f"separable inner must be one of {', '.join(SEPARABLE_INNER)}, got {inner!r}")
        middle = {"norm": lambda: make_norm(norm, in_channels), "none": nn.Identity,
                  "norm_act": lambda: nn.Sequential(make_norm(norm, in_channels), nn.ReLU(inplace=True))}[inner]()
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels, bias=False),
            middle,
            nn.Conv2d(in_channels, out_channels, 1, bias=norm == "none"),
            make_norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool -> 1×1 ConvNormAct -> upsample to the input size."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str = "batch") -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), ConvNormAct(in_channels, out_channels, 1, norm=norm))

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        return F.interpolate(super().forward(x), size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """``(N, C_in, H, W)`` -> ``(N, out_channels, H, W)``.

    Args:
        rates: dilation of the 3×3 branches (DeepLab v3: 6/12/18 at output stride 16,
            doubled to 12/24/36 at output stride 8).
        separable: depthwise-separable 3×3 branches (DeepLab v3+).
        dropout: after the projection (0.5 in DeepLab v3 / torchvision, 0.1 in v3+ practice).
        separable_inner: what the separable branches have between their two convolutions
            (see :class:`SeparableConvNormAct`).
        project_kernel: kernel of the projection after the concatenation (1; MMSegmentation's
            ``ASPPHead`` uses a 3×3 "bottleneck").
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rates: Sequence[int] = (12, 24, 36), *,
                 norm: str = "batch", separable: bool = False, dropout: float = 0.5, separable_inner: str = "norm",
                 project_kernel: int = 1) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, 1, norm=norm)]
        for rate in rates:
            if separable:
                branches.append(SeparableConvNormAct(in_channels, out_channels, dilation=rate, norm=norm,
                                                     inner=separable_inner))
            else:
                branches.append(ConvNormAct(in_channels, out_channels, 3, dilation=rate, norm=norm))
        branches.append(ASPPPooling(in_channels, out_channels, norm=norm))
        self.branches = nn.ModuleList(branches)
        self.project = nn.Sequential(
            ConvNormAct(len(branches) * out_channels, out_channels, project_kernel, norm=norm),
            nn.Dropout(dropout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))
