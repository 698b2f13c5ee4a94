"""PSPNet (Zhao, Shi, Qi, Wang & Jia, CVPR 2017, arXiv:1612.01105).

What is special here: a dilated ResNet (output stride 8) feeds the pyramid pooling module
(bins 1, 2, 3, 6), whose output goes through a 3×3 ConvNormAct (512), dropout 0.1 and a
1×1 classifier. Deep supervision: an auxiliary FCN head on the stage-3 (stride-8 res4)
features, its loss weighted 0.4 during training only.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..encoders import build_encoder
from ..layers import ConvNormAct, PyramidPooling
from ..registry import MODELS, register
from .heads import AuxHead, SegmentationHead
from .model import SegmentationModel


class PSPDecoder(nn.Module):
    """PPM on the deepest feature, then a ConvNormAct (3×3; smp: 1×1): features -> ``(N, channels, H/8, W/8)``."""

    def __init__(self, in_channels: int, *, bins: list[int], channels: int = 512, bottleneck_kernel: int = 3,
                 align_corners: bool = False, global_norm: bool = True) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels, bins, align_corners=align_corners, global_norm=global_norm)
        self.bottleneck = ConvNormAct(self.ppm.out_channels, channels, bottleneck_kernel, norm="batch")
        self.out_channels = channels

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.bottleneck(self.ppm(features[-1]))


@register(MODELS, "pspnet")
def pspnet(*, num_classes: int, in_channels: int = 3, encoder: str = "resnet50", encoder_weights: str | None = None,
           output_stride: int = 8, bins: list[int] | None = None, aux: bool = True, aux_weight: float = 0.4,
           decoder_channels: int = 512, encoder_kwargs: dict | None = None, bottleneck_kernel: int = 3,
           head_kernel: int = 1, ppm_global_norm: bool = True,
           upsample_align_corners: bool = False) -> SegmentationModel:
    """PSPNet (Zhao et al. 2017): dilated ResNet + pyramid pooling (1, 2, 3, 6) + auxiliary head (weight 0.4).

    ``encoder_kwargs`` go to timm (e.g. ``{"out_indices": [0, 1, 2]}`` keeps the encoder to stride 8).
    smp's ``PSPNet`` is ``output_stride=32`` with the encoder cut at its ``encoder_depth``,
    ``aux=False, bottleneck_kernel=1, head_kernel=3, ppm_global_norm=False, upsample_align_corners=True``
    (the last for the pooled maps and the final upsampling).
    """
    enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights, output_stride=output_stride,
                        timm_kwargs=encoder_kwargs)
    dec = PSPDecoder(enc.out_channels[-1], bins=bins or [1, 2, 3, 6], channels=decoder_channels,
                     bottleneck_kernel=bottleneck_kernel, align_corners=upsample_align_corners,
                     global_norm=ppm_global_norm)
    aux_head = AuxHead(enc.out_channels[-2], num_classes) if aux else None
    head = SegmentationHead(dec.out_channels, num_classes, dropout=0.1, kernel_size=head_kernel)
    return SegmentationModel(enc, dec, head, aux_head, aux_weight=aux_weight,
                             upsample_align_corners=upsample_align_corners)
