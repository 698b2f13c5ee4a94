"""The "FCN" baseline of torchvision and MMSegmentation: a dilated ResNet (output stride 8)
with an FCN head, as used for the FCN rows of their model tables.

What is special here (and how it differs from :mod:`pixelwise.models.fcn`, the paper's
FCN-8s): instead of skip fusion from pool3/pool4, the backbone keeps stride 8 with
dilation, and the head is a single 3×3 ConvNormAct to ``C_in / 4`` channels, dropout 0.1
and a 1×1 classifier, plus the same head on stage 3 as an auxiliary output.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..encoders import build_encoder
from ..layers import ConvNormAct
from ..registry import MODELS, register
from .heads import AuxHead
from .model import SegmentationModel


class FCNHead(nn.Module):
    """Deepest feature ``(N, C, h, w)`` -> ``(N, C/4, h, w)``: 3×3 ConvNormAct, then dropout."""

    def __init__(self, in_channels: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.block = nn.Sequential(ConvNormAct(in_channels, in_channels // 4, 3, norm="batch"), nn.Dropout(dropout))
        self.out_channels = in_channels // 4

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.block(features[-1])


@register(MODELS, "fcn_dilated")
def fcn_dilated(*, num_classes: int, in_channels: int = 3, encoder: str = "resnet50",
                encoder_weights: str | None = None, output_stride: int = 8, aux: bool = True,
                aux_weight: float = 0.4, pad_multiple: int | None = None) -> SegmentationModel:
    """Dilated-ResNet FCN (torchvision ``fcn_resnet50`` / MMSegmentation ``fcn_r50-d8`` layout).

    ``pad_multiple=1`` runs odd sizes unpadded, as torchvision does (converted weights then match exactly).
    """
    enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights, output_stride=output_stride)
    dec = FCNHead(enc.out_channels[-1])
    aux_head = AuxHead(enc.out_channels[-2], num_classes) if aux else None
    return SegmentationModel(enc, dec, nn.Conv2d(dec.out_channels, num_classes, 1), aux_head, aux_weight=aux_weight,
                             pad_multiple=pad_multiple)
