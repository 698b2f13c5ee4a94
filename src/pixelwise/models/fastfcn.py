"""FastFCN (Wu, Zhang, Huang, Liang & Yu, arXiv:1903.11816, 2019).

What is special here: the backbone is *not* dilated (output stride 32, the cheap
ImageNet layout); Joint Pyramid Upsampling (:mod:`pixelwise.layers.jpu`) rebuilds
stride-8 features from the last three stages, and an ordinary segmentation head (ASPP as
in DeepLab v3, or PSPNet's pyramid pooling) runs on them. The paper reports the same
accuracy as the dilated backbone at about three times the speed.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..encoders import build_encoder
from ..errors import ConfigError
from ..layers import ASPP, ConvNormAct, PyramidPooling
from ..layers.jpu import JointPyramidUpsampling
from ..registry import MODELS, register
from .heads import AuxHead, SegmentationHead
from .model import SegmentationModel

HEADS = ("aspp", "psp")


class FastFCNDecoder(nn.Module):
    """JPU on the last three encoder features, then the context module of ``head``.

    ``forward(features)``: encoder features with the last three at strides 8, 16, 32 ->
    ``(N, out_channels, H/8, W/8)``. ``head="aspp"``: ASPP (rates 12/24/36, the output
    stride 8 rates of DeepLab v3) + 3×3 ConvNormAct, 256 channels; ``head="psp"``: pyramid
    pooling (bins 1, 2, 3, 6) + 3×3 ConvNormAct, 512 channels. ``head_channels`` overrides
    those widths.
    """

    def __init__(self, encoder_channels: list[int], *, head: str = "aspp", jpu_channels: int = 512,
                 head_channels: int | None = None) -> None:
        super().__init__()
        if len(encoder_channels) < 3:
            raise ConfigError(f"FastFCN needs an encoder with 3 or more stages; got channels {encoder_channels}")
        self.jpu = JointPyramidUpsampling(encoder_channels[-3:], jpu_channels)
        if head == "aspp":
            width = head_channels or 256
            self.context = nn.Sequential(ASPP(self.jpu.out_channels, width, (12, 24, 36)), ConvNormAct(width, width, 3))
            self.out_channels = width
        elif head == "psp":
            ppm = PyramidPooling(self.jpu.out_channels, (1, 2, 3, 6))
            width = head_channels or 512
            self.context = nn.Sequential(ppm, ConvNormAct(ppm.out_channels, width, 3))
            self.out_channels = width
        else:
            raise ConfigError(f"unknown FastFCN head {head!r}; valid: {', '.join(HEADS)}")

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.context(self.jpu(features[-3:]))


@register(MODELS, "fastfcn")
def fastfcn(*, num_classes: int, in_channels: int = 3, encoder: str = "resnet50", encoder_weights: str | None = None,
            head: str = "aspp", jpu_channels: int = 512, head_channels: int | None = None, aux: bool = True,
            aux_weight: float = 0.2) -> SegmentationModel:
    """FastFCN (Wu et al. 2019): output-stride-32 encoder + JPU + ASPP (``head="aspp"``) or PSP head.

    ``aux=True`` adds an auxiliary FCN head on the stride-16 stage (training only), as in
    the paper's training recipe (weight 0.2, the EncNet/FastFCN code default).
    """
    enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights, output_stride=32)
    if sorted(enc.reductions[-3:]) != [8, 16, 32]:
        raise ConfigError(f"FastFCN expects the last three encoder stages at strides 8, 16, 32; {encoder!r} has "
                          f"{enc.reductions}; use an encoder with the usual 5-stage layout (e.g. resnet50)")
    dec = FastFCNDecoder(enc.out_channels, head=head, jpu_channels=jpu_channels, head_channels=head_channels)
    aux_head = AuxHead(enc.out_channels[-2], num_classes) if aux else None
    dropout = 0.1 if head == "psp" else 0.0
    return SegmentationModel(enc, dec, SegmentationHead(dec.out_channels, num_classes, dropout=dropout), aux_head,
                             aux_weight=aux_weight)
