"""LR-ASPP, the Lite Reduced Atrous Spatial Pyramid Pooling head of MobileNetV3
(Howard et al., ICCV 2019, arXiv:1905.02244, Sec. 6.4, Fig. 10).

What is special here: instead of ASPP's parallel atrous branches, one 1×1 conv + BN + ReLU
on the stride-16 feature is gated channel-wise by a squeeze-and-excitation-like branch
(global average pooling, 1×1 conv, sigmoid); the result is upsampled to stride 8 and
classified, and a second 1×1 classifier on the stride-8 feature is added as a cheap skip.
The backbone is MobileNetV3-Large whose last stage uses dilation 2 instead of stride 2, so
the deepest feature is at stride 16.

Backbone as torchvision's ``lraspp_mobilenet_v3_large`` builds it, so parameter counts and
weight files match: ``torchvision.models.mobilenet_v3_large(dilated=True).features``, the
"low" feature is the output of the first block at stride 8 (40 channels), the "high" one
the last layer (960 channels). The paper's Fig. 10 pools with a 49×49 kernel and strides
(16, 20) (for 1024×2048 Cityscapes crops); like torchvision we pool globally, which does not
depend on the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders import adapt_input_conv, load_state_file
from ..errors import ConfigError
from ..registry import ENCODERS, MODELS, register
from .model import SegmentationModel


class DilatedMobileNetV3(nn.Module):
    """torchvision's MobileNetV3-Large ``features`` with a dilated last stage, as an encoder:
    ``(N, C_in, H, W)`` -> ``[low (N, 40, H/8, W/8), high (N, 960, H/16, W/16)]`` (widths for ``width_mult=1``).

    ``weights``: ``None``, ``"imagenet"`` (torchvision download) or a local torchvision-format
    ``mobilenet_v3_large`` state-dict file (its ``features.*`` entries are loaded).
    """

    def __init__(self, *, in_channels: int = 3, weights: str | None = None, width_mult: float = 1.0) -> None:
        super().__init__()
        import torchvision

        tv_weights = "DEFAULT" if weights == "imagenet" else None
        net = torchvision.models.mobilenet_v3_large(weights=tv_weights, dilated=True, width_mult=width_mult)
        if weights not in (None, "imagenet"):
            state = {k[len("features."):]: v for k, v in load_state_file(weights).items() if k.startswith("features.")}
            missing, unexpected = net.features.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ConfigError(f"{weights!r} does not fit torchvision mobilenet_v3_large features (missing e.g. "
                                  f"{missing[:3]}, unexpected e.g. {unexpected[:3]}); is it a torchvision file?")
        self.features = net.features
        first = self.features[0][0]
        if first.in_channels != in_channels:
            conv = nn.Conv2d(in_channels, first.out_channels, first.kernel_size, first.stride, first.padding, bias=False)
            with torch.no_grad():
                conv.weight.copy_(adapt_input_conv(first.weight, in_channels))
            self.features[0][0] = conv
        # torchvision marks the blocks configured with stride 2 with ``_is_cn`` (the dilated one keeps
        # the mark); its LR-ASPP takes the 4th-from-last of [stem] + marked + [last layer]: the output
        # of the first stride-8 block. Same choice here, so torchvision LR-ASPP weights line up.
        marks = [0] + [i for i, b in enumerate(self.features) if getattr(b, "_is_cn", False)] + [len(self.features) - 1]
        self.low_index = marks[-4]
        self.out_channels = [self.features[self.low_index].out_channels, self.features[-1].out_channels]
        self.reductions = [8, 16]

    def forward(self, x: Tensor) -> list[Tensor]:
        low = None
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i == self.low_index:
                low = x
        return [low, x]


class LRASPPDecoder(nn.Module):
    """LR-ASPP (Fig. 10): ``[low (N, C_low, H/8, W/8), high (N, C_high, H/16, W/16)]`` ->
    ``(N, num_classes, H/8, W/8)``; it ends in class scores, so the model needs no extra head."""

    def __init__(self, low_channels: int, high_channels: int, num_classes: int, *, inter_channels: int = 128) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                    nn.BatchNorm2d(inter_channels), nn.ReLU(inplace=True))
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                  nn.Sigmoid())
        self.classify_high = nn.Conv2d(inter_channels, num_classes, 1)
        self.classify_low = nn.Conv2d(low_channels, num_classes, 1)

    def forward(self, features: list[Tensor]) -> Tensor:
        low, high = features
        x = self.reduce(high) * self.gate(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classify_high(x) + self.classify_low(low)


@register(ENCODERS, "tv_mobilenet_v3_large_dilated")
def mobilenet_v3_large_dilated(*, in_channels: int = 3, weights: str | None = None,
                               output_stride: int = 16) -> DilatedMobileNetV3:
    """torchvision's dilated MobileNetV3-Large (output stride 16), the backbone of its LR-ASPP and DeepLabV3."""
    if output_stride != 16:
        raise ConfigError(f"the dilated MobileNetV3-Large has output stride 16, got output_stride={output_stride}")
    return DilatedMobileNetV3(in_channels=in_channels, weights=weights)


@register(MODELS, "lraspp")
def lraspp(*, num_classes: int, in_channels: int = 3, encoder_weights: str | None = None, width_mult: float = 1.0,
           inter_channels: int = 128, pad_multiple: int = 16) -> SegmentationModel:
    """LR-ASPP (Howard et al., MobileNetV3, ICCV 2019, arXiv:1905.02244) on dilated MobileNetV3-Large.

    ``pad_multiple=1`` runs odd sizes unpadded, as torchvision does (its converted weights then match exactly).
    """
    enc = DilatedMobileNetV3(in_channels=in_channels, weights=encoder_weights, width_mult=width_mult)
    dec = LRASPPDecoder(*enc.out_channels, num_classes, inter_channels=inter_channels)
    return SegmentationModel(enc, dec, None, pad_multiple=pad_multiple)
