"""RefineNet (Lin, Milan, Shen & Reid, CVPR 2017, arXiv:1611.06612), 4-cascaded (Fig. 2c).

What is special here: instead of dilating the backbone (memory-hungry at output stride 8),
RefineNet keeps the ResNet at output stride 32 and climbs back to stride 4 through four
cascaded RefineNet blocks. Each block refines a coarse, semantically strong path with the
next finer encoder stage: residual conv units on each path, multi-resolution fusion by
summation, chained residual pooling for context, one more residual unit (blocks in
:mod:`pixelwise.layers.refine`). Every connection is residual, so the whole network
trains end to end with short gradient paths.

Layout (ResNet-101, the paper's main model): the four stage outputs (strides 4, 8, 16, 32)
are reduced by a 3×3 convolution to 512 channels (stride 32) or 256 (the others);
RefineNet-4 takes the stride-32 path alone (512 channels), RefineNet-3..1 each take one
encoder path plus the previous block's output and emit 256 channels; two more RCUs and a
1×1 classifier give scores at stride 4, upsampled bilinearly to the input.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..encoders import build_encoder
from ..errors import ConfigError
from ..layers.refine import RefineNetBlock, ResidualConvUnit
from ..registry import MODELS, register
from .heads import SegmentationHead
from .model import SegmentationModel


class RefineNetDecoder(nn.Module):
    """Four cascaded RefineNet blocks on the last four encoder features.

    ``forward(features)``: encoder feature list (the last four at strides r, 2r, 4r, 8r)
    -> ``(N, channels, H/r, W/r)``, r = 4 for a ResNet.

    Args:
        encoder_channels: channels of every encoder feature (only the last four are used).
        channels: width of RefineNet-3..1 (256 in the paper).
        coarse_channels: width of the coarsest path and RefineNet-4 (512 in the paper).
        crp_stages: pooling stages per chained residual pooling block (4; 2 in Fig. 3 of v1).
    """

    def __init__(self, encoder_channels: list[int], *, channels: int = 256, coarse_channels: int = 512,
                 crp_stages: int = 4) -> None:
        super().__init__()
        if len(encoder_channels) < 4:
            raise ConfigError(f"RefineNet needs an encoder with 4 or more stages; this one has "
                              f"{len(encoder_channels)} (channels {encoder_channels}); use e.g. encoder='resnet101'")
        fine_to_coarse = encoder_channels[-4:]
        widths = [channels, channels, channels, coarse_channels]
        # The "dimension reduction" 3×3 convolutions between the ResNet and the RefineNets.
        self.adapt = nn.ModuleList(nn.Conv2d(c, w, 3, padding=1, bias=False) for c, w in zip(fine_to_coarse, widths))
        self.refine4 = RefineNetBlock([coarse_channels], coarse_channels, crp_stages=crp_stages)
        self.refine3 = RefineNetBlock([channels, coarse_channels], channels, crp_stages=crp_stages)
        self.refine2 = RefineNetBlock([channels, channels], channels, crp_stages=crp_stages)
        self.refine1 = RefineNetBlock([channels, channels], channels, crp_stages=crp_stages)
        # Fig. 2(c): two RCUs between RefineNet-1 and the classifier.
        self.out = nn.Sequential(ResidualConvUnit(channels), ResidualConvUnit(channels))
        self.out_channels = channels

    def forward(self, features: list[Tensor]) -> Tensor:
        f1, f2, f3, f4 = (adapt(f) for adapt, f in zip(self.adapt, features[-4:]))
        x = self.refine4([f4])
        x = self.refine3([f3, x])
        x = self.refine2([f2, x])
        x = self.refine1([f1, x])
        return self.out(x)


@register(MODELS, "refinenet")
def refinenet(*, num_classes: int, in_channels: int = 3, encoder: str = "resnet101",
              encoder_weights: str | None = None, channels: int = 256, coarse_channels: int = 512,
              crp_stages: int = 4, dropout: float = 0.0) -> SegmentationModel:
    """4-cascaded RefineNet (Lin et al. 2017) on an output-stride-32 encoder with 4+ stages.

    Scores come out at the resolution of the fourth-to-last encoder stage (stride 4 for a
    ResNet) and are upsampled bilinearly to the input. ``dropout`` before the classifier
    is 0 by default (the paper does not specify one in the architecture).
    """
    enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights, output_stride=32)
    dec = RefineNetDecoder(enc.out_channels, channels=channels, coarse_channels=coarse_channels,
                           crp_stages=crp_stages)
    return SegmentationModel(enc, dec, SegmentationHead(dec.out_channels, num_classes, dropout=dropout))
