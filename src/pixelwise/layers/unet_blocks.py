"""The convolution blocks that tell the U-Net family apart; each maps
``(N, C_in, H, W)`` -> ``(N, C_out, H, W)`` and can replace ``DoubleConv`` at every level."""

from __future__ import annotations

from torch import Tensor, nn

from .conv import ConvNormAct, DoubleConv, make_norm


class ResidualDoubleConv(nn.Module):
    """Residual unit of ResUNet (Zhang, Liu & Wang 2018, arXiv:1711.10684): two pre-activated
    (norm -> ReLU -> 3×3 conv) layers plus an identity shortcut (1×1 projection when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, *, norm: str = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            make_norm(norm, in_channels), nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            make_norm(norm, out_channels), nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.shortcut = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.shortcut(x) + self.body(x)


class RecurrentConv(nn.Module):
    """Recurrent convolutional layer of R2U-Net (Alom et al. 2018, arXiv:1802.06955, Eq. 1):
    the same 3×3 ConvNormAct applied ``steps + 1`` times, each time to ``x + previous output``."""

    def __init__(self, channels: int, *, steps: int = 2, norm: str = "batch") -> None:
        super().__init__()
        self.steps = steps
        self.conv = ConvNormAct(channels, channels, 3, norm=norm)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        for _ in range(self.steps):
            h = self.conv(x + h)
        return h


class RecurrentResidualBlock(nn.Module):
    """RRCNN block of R2U-Net: 1×1 convolution to ``out_channels``, two recurrent convolutional
    layers, and a residual connection around them."""

    def __init__(self, in_channels: int, out_channels: int, *, steps: int = 2, norm: str = "batch") -> None:
        super().__init__()
        self.project = nn.Conv2d(in_channels, out_channels, 1)
        self.body = nn.Sequential(RecurrentConv(out_channels, steps=steps, norm=norm),
                                  RecurrentConv(out_channels, steps=steps, norm=norm))

    def forward(self, x: Tensor) -> Tensor:
        x = self.project(x)
        return x + self.body(x)


BLOCKS = {"double": DoubleConv, "residual": ResidualDoubleConv, "recurrent": RecurrentResidualBlock}


def make_block(kind: str, in_channels: int, out_channels: int, *, norm: str) -> nn.Module:
    """A U-Net level block by name: ``double`` (U-Net), ``residual`` (ResUNet), ``recurrent`` (R2U-Net)."""
    if kind not in BLOCKS:
        raise ValueError(f"unknown U-Net block {kind!r}; valid: {', '.join(BLOCKS)}")
    return BLOCKS[kind](in_channels, out_channels, norm=norm)
