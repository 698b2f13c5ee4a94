"""Dense U-Net: a U-Net whose levels are DenseNet dense blocks.

References: dense connectivity from Huang et al., CVPR 2017 (arXiv:1608.06993); the
"replace each U-Net double convolution by a dense block" design follows Cai et al.,
"Dense-UNet", Quant. Imaging Med. Surg. 2020, and the 2D DenseUNet of Li et al.,
H-DenseUNet, IEEE TMI 2018 (arXiv:1709.07330), which also joins dense blocks by U-Net
style skips. No single paper fixes every width, so the exact design here is:

* stem: 3×3 conv to ``base_channels`` (pre-activated layers need a convolution first);
* encoder level ``i``: (2×2 max-pool for ``i > 0``), dense block of ``num_layers``
  BN-ReLU-3×3 conv layers with growth rate ``k``, transition BN-ReLU-1×1 conv to
  ``base_channels·2^i`` (the U-Net widths, so the depth/width plan matches U-Net);
* decoder level ``i``: 2×2 up-convolution to ``base_channels·2^i``, concatenation with
  the encoder feature of that level, dense block + transition to ``base_channels·2^i``;
* head: BN-ReLU (the last transition's output is not yet normalised), 1×1 classifier.

What is special here: inside each level every layer sees every earlier layer's output
(feature reuse, short gradient paths) while the transitions keep the width in check, so
the network is much thinner than a U-Net for a similar depth.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers.conv import make_norm
from ..layers.dense import DenseLevel
from ..registry import MODELS, register
from .model import SegmentationModel


class DenseUNetEncoder(nn.Module):
    """Stem + one ``DenseLevel`` per level, max-pooling between levels.

    ``forward``: ``(N, C, H, W)`` -> ``depth + 1`` features, widths ``base·2^i``, strides ``2^i``.
    """

    def __init__(self, in_channels: int, *, base_channels: int, depth: int, growth_rate: int, num_layers: int,
                 norm: str) -> None:
        super().__init__()
        self.out_channels = [base_channels * 2**i for i in range(depth + 1)]
        self.reductions = [2**i for i in range(depth + 1)]
        self.stem = nn.Conv2d(in_channels, base_channels, 3, padding=1, bias=False)
        channels = base_channels
        self.levels = nn.ModuleList()
        for width in self.out_channels:
            self.levels.append(DenseLevel(channels, width, growth_rate=growth_rate, num_layers=num_layers, norm=norm))
            channels = width
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        feats = []
        for i, level in enumerate(self.levels):
            x = level(self.pool(x) if i else x)
            feats.append(x)
        return feats


class DenseUNetDecoder(nn.Module):
    """Per level, deepest first: 2×2 up-convolution, concatenate the skip, ``DenseLevel``.

    ``forward``: encoder features -> ``(N, out_channels, H, W)``, already normalised and activated.
    """

    def __init__(self, encoder_channels: list[int], *, growth_rate: int, num_layers: int, norm: str) -> None:
        super().__init__()
        self.ups, self.levels = nn.ModuleList(), nn.ModuleList()
        channels = encoder_channels[-1]
        for width in encoder_channels[-2::-1]:
            self.ups.append(nn.ConvTranspose2d(channels, width, 2, stride=2))
            self.levels.append(DenseLevel(2 * width, width, growth_rate=growth_rate, num_layers=num_layers, norm=norm))
            channels = width
        self.final = nn.Sequential(make_norm(norm, channels), nn.ReLU(inplace=True))
        self.out_channels = channels

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for k, (up, level) in enumerate(zip(self.ups, self.levels)):
            x = level(torch.cat([features[-2 - k], up(x)], dim=1))
        return self.final(x)


@register(MODELS, "dense_unet")
def dense_unet(*, num_classes: int, in_channels: int = 3, base_channels: int = 32, depth: int = 4,
               growth_rate: int = 16, num_layers: int = 4, norm: str = "batch") -> SegmentationModel:
    """Dense U-Net (dense blocks, Huang et al. 2017, in a U-Net; after Cai et al. 2020 / Li et al. 2018).

    Canonical configuration: ``base_channels=32, depth=4`` (level widths 32 ... 512 after
    each transition), ``num_layers=4`` dense layers of ``growth_rate=16`` per level.
    """
    if depth < 1 or base_channels < 1:
        raise ValueError(f"dense_unet needs depth >= 1 and base_channels >= 1, got depth={depth}, "
                         f"base_channels={base_channels}")
    enc = DenseUNetEncoder(in_channels, base_channels=base_channels, depth=depth, growth_rate=growth_rate,
                           num_layers=num_layers, norm=norm)
    dec = DenseUNetDecoder(enc.out_channels, growth_rate=growth_rate, num_layers=num_layers, norm=norm)
    return SegmentationModel(enc, dec, nn.Conv2d(dec.out_channels, num_classes, 1))
