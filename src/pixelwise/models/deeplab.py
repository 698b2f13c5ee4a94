"""DeepLab v1 (Chen et al., ICLR 2015, arXiv:1412.7062), v2 (TPAMI 2017, arXiv:1606.00915),
v3 (arXiv:1706.05587) and v3+ (ECCV 2018, arXiv:1802.02611).

v1 "LargeFOV": VGG16 whose pool4/pool5 keep the resolution (output stride 8), conv5
dilated by 2, fc6 a 3×3 convolution dilated by 12 with 1024 channels, fc7 1×1, fc8 the
classifier. v2: ASPP-L, four 3×3 classifiers dilated by 6/12/18/24 on a dilated ResNet,
their scores summed. The dense CRF that v1/v2 apply after the network is a separate
post-processing step. What is special in v3/v3+: a dilated backbone keeps output stride 8 or 16 instead of 32 (atrous
convolution keeps resolution without losing field of view), and ASPP samples the features
at several rates plus image-level pooling. v3+ adds a light decoder: ASPP output upsampled
4× and fused with low-level (stride 4) features reduced to 48 channels, then two 3×3
convolutions; optionally depthwise-separable ASPP and decoder convolutions.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders import build_encoder
from ..errors import ConfigError
from ..layers import ASPP, ConvNormAct, SeparableConvNormAct
from ..registry import MODELS, register
from .heads import AuxHead, SegmentationHead
from .model import SegmentationModel


def _rates(output_stride: int, rates: Sequence[int] | None) -> list[int]:
    if rates is not None:
        return list(rates)
    if output_stride not in (8, 16):
        raise ConfigError(f"DeepLab output_stride must be 8 or 16, got {output_stride}")
    # The paper's rates at output stride 16, doubled at 8 so the field of view is the same.
    return [6, 12, 18] if output_stride == 16 else [12, 24, 36]


class DeepLabV3Decoder(nn.Sequential):
    """ASPP on the deepest feature, then a 3×3 ConvNormAct: features -> ``(N, channels, H/os, W/os)``."""

    def __init__(self, in_channels: int, *, channels: int = 256, rates: Sequence[int] = (12, 24, 36),
                 separable: bool = False, separable_inner: str = "norm") -> None:
        super().__init__(ASPP(in_channels, channels, rates, separable=separable, separable_inner=separable_inner),
                         ConvNormAct(channels, channels, 3, norm="batch"))
        self.out_channels = channels

    def forward(self, features: list[Tensor]) -> Tensor:
        return super().forward(features[-1])


class DeepLabV3PlusDecoder(nn.Module):
    """ASPP on the deepest feature, upsampled to the stride-4 feature, concatenated with that
    feature reduced to ``low_level_channels``, then two 3×3 convolutions (v3+ Fig. 2).

    The keyword options after ``separable`` reproduce other implementations' layouts (converted
    weights): ``aspp_separable`` (``None``: as ``separable``) for the ASPP branches alone,
    ``separable_inner`` (see :class:`SeparableConvNormAct`), ``aspp_conv`` (a 3×3 ConvNormAct
    after the ASPP, smp), ``fuse_convs`` (1 in smp), ``project_kernel`` (3 in MMSegmentation)
    and ``align_corners`` for the upsampling of the ASPP output (smp: True).
    """

    def __init__(self, encoder_channels: list[int], reductions: list[int], *, channels: int = 256,
                 rates: Sequence[int] = (6, 12, 18), low_level_channels: int = 48, separable: bool = True,
                 aspp_separable: bool | None = None, separable_inner: str = "norm", aspp_conv: bool = False,
                 fuse_convs: int = 2, project_kernel: int = 1, align_corners: bool = False) -> None:
        super().__init__()
        if 4 not in reductions:
            raise ConfigError(f"DeepLab v3+ needs an encoder feature at stride 4; this encoder has {reductions}")
        if fuse_convs not in (1, 2):
            raise ConfigError(f"fuse_convs must be 1 or 2, got {fuse_convs}")
        self.low_index = reductions.index(4)
        self.align_corners = align_corners
        aspp_sep = separable if aspp_separable is None else aspp_separable

        def conv(cin: int, cout: int) -> nn.Module:
            return (SeparableConvNormAct(cin, cout, norm="batch", inner=separable_inner) if separable
                    else ConvNormAct(cin, cout, norm="batch"))

        aspp = ASPP(encoder_channels[-1], channels, rates, separable=aspp_sep, dropout=0.1,
                    separable_inner=separable_inner, project_kernel=project_kernel)
        self.aspp = nn.Sequential(aspp, conv(channels, channels)) if aspp_conv else aspp
        self.reduce = ConvNormAct(encoder_channels[self.low_index], low_level_channels, 1, norm="batch")
        self.fuse = nn.Sequential(conv(channels + low_level_channels, channels),
                                  *([conv(channels, channels)] if fuse_convs == 2 else []))
        self.out_channels = channels

    def forward(self, features: list[Tensor]) -> Tensor:
        low = self.reduce(features[self.low_index])
        x = F.interpolate(self.aspp(features[-1]), size=low.shape[-2:], mode="bilinear",
                          align_corners=self.align_corners)
        return self.fuse(torch.cat([x, low], dim=1))


@register(MODELS, "deeplabv3")
def deeplabv3(*, num_classes: int, in_channels: int = 3, encoder: str = "resnet50", encoder_weights: str | None = None,
              output_stride: int = 8, rates: list[int] | None = None, aux: bool = True, aux_weight: float = 0.4,
              separable: bool = False, pad_multiple: int | None = None, encoder_dilation: str = "timm",
              upsample_align_corners: bool = False, decoder_channels: int = 256,
              separable_inner: str = "norm") -> SegmentationModel:
    """DeepLab v3 (Chen et al. 2017): dilated encoder (output stride 8/16) + ASPP with image pooling.

    ``aux=True`` adds torchvision's auxiliary FCN head on the stride-16 stage (training only).
    ``pad_multiple=1`` runs odd sizes unpadded, as torchvision does (converted weights then match exactly).
    ``encoder_dilation="smp"`` and ``upsample_align_corners=True`` reproduce smp's ``DeepLabV3``
    (with ``separable_inner="none"`` its separable ASPP; see :class:`SeparableConvNormAct`).
    """
    enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights, output_stride=output_stride,
                        **({"dilation": encoder_dilation} if encoder_dilation != "timm" else {}))
    dec = DeepLabV3Decoder(enc.out_channels[-1], channels=decoder_channels, rates=_rates(output_stride, rates),
                           separable=separable, separable_inner=separable_inner)
    aux_head = AuxHead(enc.out_channels[-2], num_classes) if aux else None
    return SegmentationModel(enc, dec, nn.Conv2d(dec.out_channels, num_classes, 1), aux_head, aux_weight=aux_weight,
                             pad_multiple=pad_multiple, upsample_align_corners=upsample_align_corners)


@register(MODELS, "deeplabv3plus")
def deeplabv3plus(*, num_classes: int, in_channels: int = 3, encoder: str = "resnet50",
                  encoder_weights: str | None = None, output_stride: int = 16, rates: list[int] | None = None,
                  separable: bool = True, decoder_channels: int = 256, aux: bool = False, aux_weight: float = 0.4,
                  encoder_dilation: str = "timm", aspp_separable: bool | None = None, separable_inner: str = "norm",
                  aspp_conv: bool = False, fuse_convs: int = 2, project_kernel: int = 1,
                  upsample_align_corners: bool = False) -> SegmentationModel:
    """DeepLab v3+ (Chen et al. 2018): v3 encoder + decoder fusing stride-4 features; separable convs.

    The paper's Xception backbone is available as a timm encoder (e.g. ``encoder="xception65"``).
    ``aux=True`` adds the auxiliary FCN head on the stride-16 stage (training only; MMSegmentation's).
    The options from ``encoder_dilation`` on reproduce peers for converted weights (see
    :class:`DeepLabV3PlusDecoder`; ``upsample_align_corners`` applies to both upsamplings):
    smp's ``DeepLabV3Plus`` is ``encoder_dilation="smp", separable_inner="none", aspp_conv=True,
    fuse_convs=1, upsample_align_corners=True``; MMSegmentation's ``DepthwiseSeparableASPPHead`` is
    ``separable_inner="norm_act", project_kernel=3, decoder_channels=512``.
    """
    enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights, output_stride=output_stride,
                        **({"dilation": encoder_dilation} if encoder_dilation != "timm" else {}))
    dec = DeepLabV3PlusDecoder(enc.out_channels, enc.reductions, channels=decoder_channels,
                               rates=_rates(output_stride, rates), separable=separable, aspp_separable=aspp_separable,
                               separable_inner=separable_inner, aspp_conv=aspp_conv, fuse_convs=fuse_convs,
                               project_kernel=project_kernel, align_corners=upsample_align_corners)
    aux_head = AuxHead(enc.out_channels[-2], num_classes) if aux else None
    return SegmentationModel(enc, dec, SegmentationHead(dec.out_channels, num_classes), aux_head,
                             aux_weight=aux_weight, upsample_align_corners=upsample_align_corners)


class LargeFOVHead(nn.Sequential):
    """DeepLab v1 fc6 (3×3, dilation 12, 1024) -> fc7 (1×1, 1024) -> fc8 classifier, ReLU + dropout 0.5."""

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 1024, dilation: int = 12) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Conv2d(channels, num_classes, 1),
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        return super().forward(features[-1])


class ASPPSum(nn.Module):
    """DeepLab v2 ASPP-L: parallel 3×3 classifiers dilated by ``rates``, scores summed."""

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(in_channels, num_classes, 3, padding=r, dilation=r) for r in rates)
        for branch in self.branches:  # small init as in the reference (N(0, 0.01)), so the sum starts tame
            nn.init.normal_(branch.weight, std=0.01)
            nn.init.zeros_(branch.bias)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        return sum(branch(x) for branch in self.branches)


@register(MODELS, "deeplabv1")
def deeplabv1(*, num_classes: int, in_channels: int = 3, encoder_weights: str | None = None) -> SegmentationModel:
    """DeepLab v1 LargeFOV (Chen et al. 2015): dilated VGG16 (output stride 8) + fc6 with dilation 12."""
    enc = build_encoder("vgg16", in_channels=in_channels, weights=encoder_weights, output_stride=8)
    return SegmentationModel(enc, LargeFOVHead(enc.out_channels[-1], num_classes), None, pad_multiple=8)


@register(MODELS, "deeplabv2")
def deeplabv2(*, num_classes: int, in_channels: int = 3, encoder: str = "resnet101", encoder_weights: str | None = None,
              output_stride: int = 8, rates: list[int] | None = None) -> SegmentationModel:
    """DeepLab v2 (Chen et al. 2017): dilated ResNet-101 + ASPP-L (rates 6/12/18/24, summed)."""
    enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights, output_stride=output_stride)
    return SegmentationModel(enc, ASPPSum(enc.out_channels[-1], num_classes, rates or (6, 12, 18, 24)), None)
