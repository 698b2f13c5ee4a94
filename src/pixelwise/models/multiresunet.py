"""MultiResUNet (Ibtehaz & Rahman, Neural Networks 121, 2020, arXiv:1902.04049).

What is special here, against U-Net:

* Each level's double convolution becomes a **MultiRes block**: three chained 3×3
  convolutions of widths ``W/6, W/3, W/2`` (receptive fields 3, 5, 7: a cheap
  Inception-like multi-scale block), concatenated, plus a 1×1 residual shortcut, where
  ``W = α·U`` with ``U`` the U-Net width of the level (32 ... 512) and ``α = 1.67``.
* Each skip connection goes through a **Res path**: a chain of 3×3 convolutions, each with
  a 1×1 residual shortcut, so encoder features are "made more semantic" before they meet
  the decoder. Chains are 4, 3, 2, 1 units long from the top level down.

Convolutions have no bias and are followed by batch norm (Eq. and Fig. 3-4 of the paper).
Widths are truncated to integers, ``int(W/6)`` etc. The paper configuration (3 input
channels, 1 class) has 7.25 M trainable parameters (7.28 M counting batch-norm running
statistics, as Keras totals do) against the paper's 7.26 M; the small gap comes from
batch-norm details of the reference implementation (e.g. batch norm without scale), not
from the layout.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import ConvNormAct
from ..registry import MODELS, register
from .model import SegmentationModel


def multires_widths(u: int, alpha: float = 1.67) -> tuple[int, int, int]:
    """Widths of the three 3×3 convolutions of a MultiRes block: ``int(W/6), int(W/3), int(W/2)``, ``W = α·U``."""
    w = alpha * u
    return int(w / 6), int(w / 3), int(w / 2)


class MultiResBlock(nn.Module):
    """MultiRes block: ``(N, C_in, H, W)`` -> ``(N, sum(multires_widths(U)), H, W)``.

    ``a = conv3(x); b = conv3(a); c = conv3(b); y = BN(ReLU(BN(cat(a, b, c)) + BN(conv1(x))))``.
    """

    def __init__(self, in_channels: int, u: int, *, alpha: float = 1.67) -> None:
        super().__init__()
        w1, w2, w3 = multires_widths(u, alpha)
        self.out_channels = w1 + w2 + w3
        self.conv1 = ConvNormAct(in_channels, w1, 3)
        self.conv2 = ConvNormAct(w1, w2, 3)
        self.conv3 = ConvNormAct(w2, w3, 3)
        self.norm_cat = nn.BatchNorm2d(self.out_channels)
        self.shortcut = ConvNormAct(in_channels, self.out_channels, 1, act=False)
        self.act = nn.ReLU(inplace=True)
        self.norm_out = nn.BatchNorm2d(self.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        a = self.conv1(x)
        b = self.conv2(a)
        c = self.conv3(b)
        y = self.norm_cat(torch.cat([a, b, c], dim=1)) + self.shortcut(x)
        return self.norm_out(self.act(y))


class ResPathUnit(nn.Module):
    """One Res path unit: ``BN(ReLU(ConvBN3×3(x) + ConvBN1×1(x)))``; ``(N, C_in, H, W)`` -> ``(N, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, 3)
        self.shortcut = ConvNormAct(in_channels, out_channels, 1, act=False)
        self.act = nn.ReLU(inplace=True)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.act(self.conv(x) + self.shortcut(x)))


class ResPath(nn.Sequential):
    """``length`` Res path units, the first mapping ``in_channels`` to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, *, length: int) -> None:
        if length < 1:
            raise ValueError(f"Res path length must be >= 1, got {length}")
        super().__init__(*[ResPathUnit(in_channels if i == 0 else out_channels, out_channels)
                           for i in range(length)])


class MultiResEncoder(nn.Module):
    """MultiRes blocks with 2×2 max-pooling between them; skips pass through Res paths.

    ``forward``: ``(N, C, H, W)`` -> ``depth`` Res-path outputs at strides ``1 ... 2^(depth-1)``
    followed by the bottleneck block output at stride ``2^depth``.
    """

    def __init__(self, in_channels: int, widths: list[int], *, alpha: float) -> None:
        super().__init__()
        self.blocks, self.paths = nn.ModuleList(), nn.ModuleList()
        depth = len(widths) - 1
        channels = in_channels
        for i, u in enumerate(widths):
            block = MultiResBlock(channels, u, alpha=alpha)
            self.blocks.append(block)
            channels = block.out_channels
            if i < depth:  # Res path lengths depth, depth-1, ..., 1 (4, 3, 2, 1 in the paper)
                self.paths.append(ResPath(channels, u, length=depth - i))
        self.pool = nn.MaxPool2d(2)
        self.out_channels = list(widths[:-1]) + [channels]
        self.reductions = [2**i for i in range(len(widths))]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, block in enumerate(self.blocks):
            x = block(self.pool(x) if i else x)
            feats.append(self.paths[i](x) if i < len(self.paths) else x)
        return feats


class MultiResDecoder(nn.Module):
    """2×2 up-convolution to ``U``, concatenation with the Res-path skip, a MultiRes block.

    ``forward``: encoder features -> ``(N, out_channels, H, W)``.
    """

    def __init__(self, encoder_channels: list[int], widths: list[int], *, alpha: float) -> None:
        super().__init__()
        self.ups, self.blocks = nn.ModuleList(), nn.ModuleList()
        channels = encoder_channels[-1]
        for i in range(len(widths) - 2, -1, -1):
            self.ups.append(nn.ConvTranspose2d(channels, widths[i], 2, stride=2))
            block = MultiResBlock(widths[i] + encoder_channels[i], widths[i], alpha=alpha)
            self.blocks.append(block)
            channels = block.out_channels
        self.out_channels = channels

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for k, (up, block) in enumerate(zip(self.ups, self.blocks)):
            x = block(torch.cat([features[-2 - k], up(x)], dim=1))
        return x


@register(MODELS, "multiresunet")
def multiresunet(*, num_classes: int, in_channels: int = 3, base_channels: int = 32, depth: int = 4,
                 alpha: float = 1.67) -> SegmentationModel:
    """MultiResUNet (Ibtehaz & Rahman 2020): MultiRes blocks and Res paths.

    Paper configuration: ``base_channels=32, depth=4`` (U = 32, 64, 128, 256, 512),
    ``alpha=1.67``. Its own encoder only: the Res paths and MultiRes blocks are the
    contribution, so there is no pretrained-encoder variant.
    """
    if depth < 1 or base_channels < 6 / alpha:
        raise ValueError(f"multiresunet needs depth >= 1 and base_channels*alpha >= 6 so every MultiRes "
                         f"convolution has a channel; got depth={depth}, base_channels={base_channels}, alpha={alpha}")
    widths = [base_channels * 2**i for i in range(depth + 1)]
    enc = MultiResEncoder(in_channels, widths, alpha=alpha)
    dec = MultiResDecoder(enc.out_channels, widths, alpha=alpha)
    return SegmentationModel(enc, dec, nn.Conv2d(dec.out_channels, num_classes, 1))
