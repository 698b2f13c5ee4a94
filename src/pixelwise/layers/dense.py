"""Dense connectivity (Huang, Liu, van der Maaten & Weinberger, CVPR 2017, arXiv:1608.06993).

A dense block's layer ``l`` sees the concatenation of the block input and the outputs of
all earlier layers, ``x_l = H_l(cat(x_0, ..., x_{l-1}))``, and adds ``k`` (the growth
rate) new channels; a block of ``L`` layers maps ``C`` channels to ``C + L·k``. A 1×1
transition then sets the width. Layers are pre-activated (BN -> ReLU -> conv), as in
DenseNet.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .conv import make_norm


class DenseLayer(nn.Sequential):
    """DenseNet composite function ``H_l``: norm -> ReLU -> 3×3 conv to ``growth_rate`` channels.

    ``(N, C_in, H, W)`` -> ``(N, growth_rate, H, W)``.
    """

    def __init__(self, in_channels: int, growth_rate: int, *, norm: str = "batch") -> None:
        super().__init__(make_norm(norm, in_channels), nn.ReLU(inplace=False),
                         nn.Conv2d(in_channels, growth_rate, 3, padding=1, bias=False))


class DenseBlock(nn.Module):
    """``num_layers`` dense layers, each fed every earlier feature map; the output is all of them.

    ``(N, C, H, W)`` -> ``(N, C + num_layers·growth_rate, H, W)`` (``out_channels``).
    """

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int, *, norm: str = "batch") -> None:
        super().__init__()
        if growth_rate < 1 or num_layers < 1:
            raise ValueError(f"DenseBlock needs growth_rate >= 1 and num_layers >= 1, got "
                             f"growth_rate={growth_rate}, num_layers={num_layers}")
        self.layers = nn.ModuleList(DenseLayer(in_channels + i * growth_rate, growth_rate, norm=norm)
                                    for i in range(num_layers))
        self.out_channels = in_channels + num_layers * growth_rate

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class Transition(nn.Sequential):
    """DenseNet transition without its pooling: norm -> ReLU -> 1×1 conv; ``(N, C_in, H, W)`` -> ``(N, C_out, H, W)``.

    The U-Net around it does the down- and upsampling, so only the width control is kept.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: str = "batch") -> None:
        super().__init__(make_norm(norm, in_channels), nn.ReLU(inplace=False),
                         nn.Conv2d(in_channels, out_channels, 1, bias=False))


class DenseLevel(nn.Sequential):
    """A U-Net level made dense: ``DenseBlock`` then ``Transition`` to ``out_channels``.

    ``(N, C_in, H, W)`` -> ``(N, out_channels, H, W)``; drop-in for ``DoubleConv``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, growth_rate: int = 16, num_layers: int = 4,
                 norm: str = "batch") -> None:
        block = DenseBlock(in_channels, growth_rate, num_layers, norm=norm)
        super().__init__(block, Transition(block.out_channels, out_channels, norm=norm))
