"""RefineNet building blocks (Lin, Milan, Shen & Reid, "RefineNet: Multi-Path Refinement
Networks for High-Resolution Semantic Segmentation", CVPR 2017, arXiv:1611.06612, Fig. 3).

What is special here: no block changes resolution by learning; detail comes back by
*summing* a coarse, semantically strong path into a fine one (MRF), and context comes
from a chain of stride-1 max-pools whose outputs are added residually (CRP), so every
block is an identity plus corrections and gradients reach the encoder on short paths.

The blocks follow the paper: the convolutions carry biases and there is no batch norm
(the paper fine-tunes with batch norm frozen inside the ResNet only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class ResidualConvUnit(nn.Module):
    """RCU: ``x + conv3x3(relu(conv3x3(relu(x))))``; ``(N, C, H, W)`` -> ``(N, C, H, W)``.

    A pre-activation residual block without normalisation (Fig. 3b). It fine-tunes the
    pretrained features for segmentation without disturbing them at initialisation as much
    as a plain convolution would.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # Not in-place: x is still needed for the skip connection.
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class MultiResolutionFusion(nn.Module):
    """MRF (Fig. 3c): a 3×3 convolution per path to ``out_channels``, each upsampled
    (bilinear) to the largest input resolution, then summed.

    ``forward(xs)``: list of ``(N, C_i, H_i, W_i)`` -> ``(N, out_channels, max H_i, max W_i)``.
    With a single path the paper skips the block (the input passes unchanged); that needs
    ``in_channels == [out_channels]``.

    Args:
        in_channels: channels of each input path.
        out_channels: the common width; the paper uses the smallest of the inputs.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        if len(in_channels) == 1 and in_channels[0] != out_channels:
            raise ValueError(f"a single-path MRF is an identity, so in_channels {list(in_channels)} must equal "
                             f"out_channels {out_channels}; pass out_channels={in_channels[0]}")
        self.convs = nn.ModuleList(
            nn.Conv2d(c, out_channels, 3, padding=1) for c in in_channels) if len(in_channels) > 1 else None
        self.out_channels = out_channels

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        if self.convs is None:
            return xs[0]
        if len(xs) != len(self.convs):
            raise ValueError(f"MRF built for {len(self.convs)} paths got {len(xs)} inputs")
        size = max((x.shape[-2:] for x in xs), key=lambda s: s[0] * s[1])
        out = None
        for conv, x in zip(self.convs, xs):
            y = conv(x)
            if y.shape[-2:] != size:
                y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            out = y if out is None else out + y
        return out


class ChainedResidualPooling(nn.Module):
    """CRP (Fig. 3d): ``x = relu(x)``; ``p_0 = x``; ``p_k = conv3x3(maxpool5x5(p_{k-1}))``;
    output ``x + p_1 + ... + p_K``. ``(N, C, H, W)`` -> ``(N, C, H, W)``.

    Each pool (5×5, stride 1) widens the field of view; the chain reuses the previous
    pooled result, so K stages see a (4K+1)² window at the cost of K small convolutions.
    Fig. 3 of arXiv:1611.06612 v1 draws 2 stages; the later version of the paper and the
    authors' released models use 4, the default here. The convolutions have no bias, and
    there is no ReLU after them: the sum is a learned correction of the input.
    """

    def __init__(self, channels: int, *, stages: int = 4) -> None:
        super().__init__()
        if stages < 1:
            raise ValueError(f"CRP needs at least one pooling stage, got stages={stages}")
        self.pool = nn.MaxPool2d(5, stride=1, padding=2)
        self.convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(stages))

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        out, path = x, x
        for conv in self.convs:
            path = conv(self.pool(path))
            out = out + path
        return out


class RefineNetBlock(nn.Module):
    """One RefineNet (Fig. 3a): 2 RCUs per input path -> MRF -> CRP -> 1 output RCU.

    ``forward(xs)``: list of ``(N, C_i, H_i, W_i)`` (coarse paths first or last, any order)
    -> ``(N, out_channels, max H_i, max W_i)``.

    Args:
        in_channels: width of each path (the encoder feature after its adaptation
            convolution, and the previous RefineNet's output).
        out_channels: width after fusion; the smallest path width in the paper.
        crp_stages: pooling stages of the CRP (4, see :class:`ChainedResidualPooling`).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, *, crp_stages: int = 4) -> None:
        super().__init__()
        self.paths = nn.ModuleList(nn.Sequential(ResidualConvUnit(c), ResidualConvUnit(c)) for c in in_channels)
        self.mrf = MultiResolutionFusion(in_channels, out_channels)
        self.crp = ChainedResidualPooling(out_channels, stages=crp_stages)
        self.out_rcu = ResidualConvUnit(out_channels)
        self.out_channels = out_channels

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        return self.out_rcu(self.crp(self.mrf([path(x) for path, x in zip(self.paths, xs)])))
