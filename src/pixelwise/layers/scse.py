"""Concurrent spatial and channel squeeze & excitation, scSE (Roy, Navab & Wachinger, MICCAI 2018,
arXiv:1803.02579): ``x · cSE(x) + x · sSE(x)``, where cSE re-weights channels from their global
average (a 1×1 bottleneck of ``C / reduction``, then a sigmoid) and sSE re-weights pixels from a
1×1 projection to one channel. smp's ``decoder_attention_type="scse"``."""

from __future__ import annotations

from torch import Tensor, nn


class SCSE(nn.Module):
    """``(N, C, H, W)`` -> ``(N, C, H, W)``."""

    def __init__(self, channels: int, *, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.channel = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                     nn.Conv2d(hidden, channels, 1), nn.Sigmoid())
        self.spatial = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.channel(x) + x * self.spatial(x)
