"""Classifier heads: 1×1 convolutions from decoder channels to class scores."""

from __future__ import annotations

from torch import nn


class SegmentationHead(nn.Sequential):
    """``(N, C_in, H, W)`` -> ``(N, num_classes, H, W)``: optional dropout, then a 1×1 convolution."""

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(in_channels, num_classes, 1),
        )
