"""Classifier heads: 1×1 convolutions from decoder channels to class scores."""

from __future__ import annotations

from torch import Tensor, nn

from ..layers import ConvNormAct


class SegmentationHead(nn.Sequential):
    """``(N, C_in, H, W)`` -> ``(N, num_classes, H, W)``: optional dropout, then a 1×1 convolution
    (``kernel_size=3``: smp's 3×3 head, padded)."""

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float = 0.0, kernel_size: int = 1) -> None:
        super().__init__(
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(in_channels, num_classes, kernel_size, padding=kernel_size // 2),
        )


class AuxHead(nn.Module):
    """Auxiliary classifier on one encoder feature (the FCN head used by PSPNet/DeepLab/torchvision):
    3×3 ConvNormAct to ``in_channels // 4``, dropout, 1×1 convolution to ``num_classes``.

    ``forward(features)``: the encoder feature list -> ``(N, num_classes, h, w)`` from ``features[index]``.
    """

    def __init__(self, in_channels: int, num_classes: int, *, index: int = -2, dropout: float = 0.1) -> None:
        super().__init__()
        self.index = index
        self.block = nn.Sequential(
            ConvNormAct(in_channels, in_channels // 4, 3, norm="batch"),
            nn.Dropout(dropout),
            nn.Conv2d(in_channels // 4, num_classes, 1),
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.block(features[self.index])
