"""UPerNet (Xiao, Liu, Zhou, Jiang & Sun, ECCV 2018, arXiv:1807.10221), as the ConvNeXt and Swin
papers use it for ADE20K (MMSegmentation's ``UPerHead``).

What is special here: a Pyramid Pooling Module (PSPNet's bins 1/2/3/6, each to ``channels``,
concatenated with the input and fused by a 3×3 ConvNormAct) on the deepest feature is the top
of a Feature Pyramid: 1×1 lateral ConvNormActs on the other levels, top-down bilinear
addition, a 3×3 ConvNormAct per level, then *all* levels are upsampled to 1/4, concatenated
and fused by a 3×3 ConvNormAct before the 1×1 classifier ("fusion" in Fig. 3 of the paper).
Training adds an FCN auxiliary head on the stride-16 feature (weight 0.4). Any encoder with
four levels fits: ConvNeXt and Swin from timm, ResNets, MiT. ``out_norm=True`` adds the
per-level LayerNorm that ConvNeXt/Swin segmentation backbones put on their outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders import build_encoder
from ..errors import ConfigError
from ..layers import ConvNormAct, PyramidPooling
from ..registry import MODELS, register
from .model import SegmentationModel


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of ``(N, C, H, W)`` (ConvNeXt's "channels_first" LayerNorm)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class NormedEncoder(nn.Module):
    """An encoder whose every output gets a LayerNorm2d: same ``out_channels`` and ``reductions``."""

    def __init__(self, encoder: nn.Module, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.body = encoder
        self.norms = nn.ModuleList(LayerNorm2d(c, eps=eps) for c in encoder.out_channels)
        self.out_channels, self.reductions = list(encoder.out_channels), list(encoder.reductions)

    def forward(self, x: Tensor) -> list[Tensor]:
        return [norm(f) for norm, f in zip(self.norms, self.body(x))]


class UPerHead(nn.Module):
    """PPM + FPN + multi-level fusion: the last ``len(encoder_channels)`` features
    ``[C2..C5]`` -> ``(N, channels, H/4, W/4)`` (before the classifier)."""

    def __init__(self, encoder_channels: list[int], *, channels: int = 512, bins: tuple[int, ...] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.ppm = PyramidPooling(encoder_channels[-1], bins, channels=channels)
        self.ppm_fuse = ConvNormAct(self.ppm.out_channels, channels, 3)
        self.lateral = nn.ModuleList(ConvNormAct(c, channels, 1) for c in encoder_channels[:-1])
        self.smooth = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in encoder_channels[:-1])
        self.fuse = ConvNormAct(len(encoder_channels) * channels, channels, 3)
        self.out_channels = channels
        self.levels = len(encoder_channels)

    def forward(self, features: list[Tensor]) -> Tensor:
        features = features[-self.levels:]
        laterals = [conv(f) for conv, f in zip(self.lateral, features)] + [self.ppm_fuse(self.ppm(features[-1]))]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="bilinear", align_corners=False)
        outs = [conv(x) for conv, x in zip(self.smooth, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        return self.fuse(torch.cat(outs, dim=1))


class FCNAuxHead(nn.Module):
    """MMSegmentation's ``FCNHead`` (one 3×3 ConvNormAct, dropout 0.1, 1×1 classifier) on ``features[index]``."""

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 256, index: int = 2) -> None:
        super().__init__()
        self.index = index
        self.block = nn.Sequential(ConvNormAct(in_channels, channels, 3), nn.Dropout(0.1),
                                   nn.Conv2d(channels, num_classes, 1))

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.block(features[self.index])


@register(MODELS, "upernet")
def upernet(*, num_classes: int, in_channels: int = 3, encoder: str = "convnext_tiny",
            encoder_weights: str | None = None, channels: int = 512, bins: list[int] | None = None,
            out_norm: bool = False, aux: bool = True, aux_channels: int = 256, aux_weight: float = 0.4,
            dropout: float = 0.1, encoder_kwargs: dict | None = None,
            upsample_align_corners: bool = False) -> SegmentationModel:
    """UPerNet (Xiao et al. 2018): PPM + FPN fusion head on any four-level encoder (ConvNeXt, Swin, ResNet, MiT).

    Defaults follow the ConvNeXt/Swin ADE20K setup: 512 channels, bins 1/2/3/6, FCN auxiliary
    head (256 channels) on the stride-16 level, loss weight 0.4. ``out_norm=True`` with
    ``convnext_tiny`` is transformers' / MMSegmentation's UPerNet-ConvNeXt-T (60,242,636 parameters
    for 150 classes). ``encoder_kwargs`` go to ``timm.create_model``. ``out_norm=True, aux=False,
    channels=256, upsample_align_corners=True`` is smp's ``UPerNet``.
    """
    enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights, timm_kwargs=encoder_kwargs)
    if len(enc.out_channels) < 4:
        raise ConfigError(f"UPerNet needs an encoder with 4 levels; {encoder!r} has reductions {enc.reductions}")
    if len(enc.out_channels) > 4:  # e.g. ResNets' stride-2 stem feature: UPerNet uses strides 4..32
        enc = _LastLevels(enc, 4)
    if out_norm:
        enc = NormedEncoder(enc)
    dec = UPerHead(enc.out_channels, channels=channels, bins=tuple(bins or (1, 2, 3, 6)))
    head = nn.Sequential(nn.Dropout2d(dropout) if dropout else nn.Identity(), nn.Conv2d(channels, num_classes, 1))
    aux_head = FCNAuxHead(enc.out_channels[2], num_classes, channels=aux_channels) if aux else None
    return SegmentationModel(enc, dec, head, aux_head, aux_weight=aux_weight,
                             upsample_align_corners=upsample_align_corners)


class _LastLevels(nn.Module):
    """Keep the last ``n`` features of an encoder."""

    def __init__(self, encoder: nn.Module, n: int) -> None:
        super().__init__()
        self.body = encoder
        self.n = n
        self.out_channels, self.reductions = list(encoder.out_channels[-n:]), list(encoder.reductions[-n:])

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.body(x)[-self.n:]
