"""Panoptic FPN semantic segmentation branch (Kirillov, Girshick, He & Dollár, CVPR 2019,
arXiv:1901.02446, Fig. 3) on a Feature Pyramid Network (Lin et al., CVPR 2017, arXiv:1612.03144).

What is special here: the FPN builds a pyramid P2-P5 (strides 4-32) with equal width by
adding each encoder stage, through a 1×1 lateral convolution, to the 2×-upsampled coarser
level, then smoothing with a 3×3 convolution. The semantic head brings every level to 1/4
with the same cheap recipe repeated: (3×3 conv + GroupNorm + ReLU, then 2× bilinear
upsampling) once per halving (P5: 3, P4: 2, P3: 1; P2: one conv without upsampling), sums the
four maps, and classifies with a 1×1 convolution followed by 4× bilinear upsampling. All the
multi-scale fusion is element-wise sums, which makes it light next to atrous/ASPP decoders.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders import build_encoder
from ..errors import ConfigError
from ..registry import MODELS, register
from .model import SegmentationModel

LEVELS = (4, 8, 16, 32)


class FPN(nn.Module):
    """Top-down pathway with lateral connections: the encoder features at strides 4, 8, 16, 32
    -> ``[P2, P3, P4, P5]``, each ``(N, channels, H/s, W/s)``."""

    def __init__(self, encoder_channels: list[int], reductions: list[int], *, channels: int = 256,
                 smooth: bool = True) -> None:
        super().__init__()
        missing = [r for r in LEVELS if r not in reductions]
        if missing:
            raise ConfigError(f"FPN needs encoder features at strides {list(LEVELS)}; this encoder has {reductions} "
                              f"(missing {missing}); use an undilated encoder (output_stride 32) such as resnet50")
        self.indices = [reductions.index(r) for r in LEVELS]
        self.lateral = nn.ModuleList(nn.Conv2d(encoder_channels[i], channels, 1) for i in self.indices)
        # smooth=False: no 3×3 after the merge (smp's FPN decoder).
        self.smooth = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in self.indices) if smooth else None

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        laterals = [conv(features[i]) for conv, i in zip(self.lateral, self.indices)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            # Nearest upsampling, as in the FPN paper; size= handles any rounding in the encoder.
            merged.insert(0, lateral + F.interpolate(merged[0], size=lateral.shape[-2:], mode="nearest"))
        return [conv(m) for conv, m in zip(self.smooth, merged)] if self.smooth is not None else merged


class UpsampleStage(nn.Sequential):
    """3×3 conv + GroupNorm + ReLU, then (``upsample=True``) 2× bilinear: ``(N, C_in, h, w)`` -> ``(N, C_out, 2h, 2w)``."""

    def __init__(self, in_channels: int, out_channels: int, *, upsample: bool, align_corners: bool = False) -> None:
        # 32 groups as in the paper's GroupNorm; fewer when the width is not a multiple of 32.
        groups = math.gcd(32, out_channels)
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.GroupNorm(groups, out_channels), nn.ReLU(inplace=True))
        self.upsample = upsample
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if not self.upsample:
            return x
        return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=self.align_corners)


class PanopticFPNDecoder(nn.Module):
    """FPN + semantic head of Fig. 3: encoder features -> ``(N, head_channels, H/4, W/4)`` (the sum
    over levels), before the 1×1 classifier."""

    def __init__(self, encoder_channels: list[int], reductions: list[int], *, fpn_channels: int = 256,
                 head_channels: int = 128, smooth: bool = True, align_corners: bool = False) -> None:
        super().__init__()
        self.fpn = FPN(encoder_channels, reductions, channels=fpn_channels, smooth=smooth)
        branches = []
        for level in range(len(LEVELS)):
            n = max(level, 1)  # P2 still gets one conv stage, just without the upsampling
            branches.append(nn.Sequential(*(
                UpsampleStage(fpn_channels if k == 0 else head_channels, head_channels, upsample=level > 0,
                              align_corners=align_corners)
                for k in range(n))))
        self.branches = nn.ModuleList(branches)
        self.out_channels = head_channels

    def forward(self, features: list[Tensor]) -> Tensor:
        pyramid = self.fpn(features)
        return sum(branch(p) for branch, p in zip(self.branches, pyramid))


@register(MODELS, "fpn")
def fpn(*, num_classes: int, in_channels: int = 3, encoder: str = "resnet50", encoder_weights: str | None = None,
        fpn_channels: int = 256, head_channels: int = 128, smooth: bool = True,
        align_corners: bool = False) -> SegmentationModel:
    """Panoptic FPN semantic head (Kirillov et al., CVPR 2019, arXiv:1901.02446) on any encoder with strides 4-32.

    ``smooth=False, align_corners=True`` is smp's ``FPN`` decoder (no 3×3 after each merge, corner-aligned
    2× upsampling in the semantic head and in the final 4×).
    """
    enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights)
    dec = PanopticFPNDecoder(enc.out_channels, enc.reductions, fpn_channels=fpn_channels, head_channels=head_channels,
                             smooth=smooth, align_corners=align_corners)
    # The 1×1 classifier runs at 1/4; SegmentationModel's bilinear resize is the final 4× upsampling.
    return SegmentationModel(enc, dec, nn.Conv2d(head_channels, num_classes, 1), upsample_align_corners=align_corners)
