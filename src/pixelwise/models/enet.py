"""ENet (Paszke, Chaurasia, Kim & Culurciello 2016, arXiv:1606.02147, Table 1).

What is special here: a real-time network of about 0.37 M parameters with a large encoder and
a small decoder. The input is downsampled early and hard: the initial block concatenates a
stride-2 3×3 convolution (13 filters) with a max-pool of the input (3 channels) to give 16
channels at 1/2. Every later layer is a ResNet-style bottleneck (1×1 projection to a quarter of
the channels, a main convolution, 1×1 expansion, spatial dropout, PReLU) whose main convolution
is regular, dilated (2, 4, 8, 16) or asymmetric (5×1 then 1×5). Downsampling bottlenecks
max-pool the shortcut (keeping the argmax indices) and zero-pad its channels; the decoder's
upsampling bottlenecks max-unpool the shortcut with those stored indices, as in SegNet. A final
2×2 transposed ("full") convolution returns to input resolution.

Choices the paper leaves open: the upsampling bottlenecks use a 3×3 stride-2 transposed
convolution, and the decoder uses ReLU instead of PReLU (as the authors' released code does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS, register

# Stage 2 (and 3, without its downsampling block) of Table 1: (kind, dilation or kernel).
STAGE2_PLAN = [("regular", 1), ("dilated", 2), ("asymmetric", 5), ("dilated", 4),
               ("regular", 1), ("dilated", 8), ("asymmetric", 5), ("dilated", 16)]


def _act(prelu: bool, channels: int) -> nn.Module:
    return nn.PReLU(channels) if prelu else nn.ReLU(inplace=True)


class InitialBlock(nn.Module):
    """``(N, C_in, H, W)`` -> ``(N, out_channels, H/2, W/2)``: [3×3 stride-2 conv with
    ``out_channels - C_in`` filters ‖ 2×2 max-pool of the input], then BN and PReLU (Fig. 2a)."""

    def __init__(self, in_channels: int, out_channels: int = 16) -> None:
        super().__init__()
        if out_channels <= in_channels:
            raise ConfigError(f"ENet initial_channels ({out_channels}) must exceed in_channels ({in_channels}): "
                              f"the convolution branch has initial_channels - in_channels filters")
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2, 2)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


def _main_conv(channels: int, kind: str, value: int) -> list[nn.Module]:
    if kind == "regular":
        return [nn.Conv2d(channels, channels, 3, padding=1, bias=False)]
    if kind == "dilated":
        return [nn.Conv2d(channels, channels, 3, padding=value, dilation=value, bias=False)]
    if kind == "asymmetric":
        # A k×k filter factored into k×1 and 1×k: the same field of view for 2k instead of k² weights.
        return [nn.Conv2d(channels, channels, (value, 1), padding=(value // 2, 0), bias=False),
                nn.Conv2d(channels, channels, (1, value), padding=(0, value // 2), bias=False)]
    raise ConfigError(f"unknown ENet bottleneck kind {kind!r}; valid: regular, dilated, asymmetric")


class Bottleneck(nn.Module):
    """Non-downsampling bottleneck (Fig. 2b): ``(N, C, H, W)`` -> ``(N, C, H, W)``.

    ``kind`` is ``regular`` (3×3), ``dilated`` (3×3 with dilation ``value``) or ``asymmetric``
    (``value``×1 then 1×``value``); the internal width is ``channels // 4``.
    """

    def __init__(self, channels: int, *, kind: str = "regular", value: int = 1, dropout: float = 0.1,
                 prelu: bool = True) -> None:
        super().__init__()
        inner = max(channels // 4, 1)
        self.branch = nn.Sequential(
            nn.Conv2d(channels, inner, 1, bias=False), nn.BatchNorm2d(inner), _act(prelu, inner),
            *_main_conv(inner, kind, value), nn.BatchNorm2d(inner), _act(prelu, inner),
            nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels),
            nn.Dropout2d(dropout),
        )
        self.act = _act(prelu, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.branch(x))


class DownsamplingBottleneck(nn.Module):
    """``(N, C_in, H, W)`` -> ``(N, C_out, H/2, W/2)`` and the max-pool indices.

    The projection is a 2×2 stride-2 convolution (the paper's choice over a 1×1 with stride 2,
    which would drop 75 % of the input); the shortcut is max-pooled and zero-padded to ``C_out``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        inner = max(out_channels // 4, 1)
        self.extra = out_channels - in_channels
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, inner, 2, stride=2, bias=False), nn.BatchNorm2d(inner), nn.PReLU(inner),
            nn.Conv2d(inner, inner, 3, padding=1, bias=False), nn.BatchNorm2d(inner), nn.PReLU(inner),
            nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.Dropout2d(dropout),
        )
        self.act = nn.PReLU(out_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shortcut, indices = max_pool_with_indices(x)
        shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.extra))  # zero feature maps, no parameters
        return self.act(shortcut + self.branch(x)), indices


def max_pool_with_indices(x: Tensor) -> tuple[Tensor, Tensor]:
    """2×2 stride-2 max-pool of ``(N, C, H, W)`` (H, W even) returning ``F.max_pool2d``'s flat
    argmax indices too, computed from a reshape so it exports to ONNX: ONNX Runtime rejects the
    graph the exporter makes for ``max_pool2d_with_indices`` when the indices feed a scatter."""
    n, c, h, w = x.shape
    windows = x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)
    values, arg = windows.max(dim=-1)  # first maximum in row-major window order, as max_pool2d picks
    rows = torch.arange(h // 2, device=x.device).view(1, 1, -1, 1) * 2 + arg // 2
    cols = torch.arange(w // 2, device=x.device).view(1, 1, 1, -1) * 2 + arg % 2
    return values, rows * w + cols


def max_unpool(x: Tensor, indices: Tensor) -> Tensor:
    """2× max-unpooling: ``(N, C, h, w)`` values and the indices of a 2×2 max-pool -> ``(N, C, 2h, 2w)``,
    each value put back where its maximum was, zeros elsewhere.

    The same as ``F.max_unpool2d(x, indices, 2)``, written as a scatter because
    ``torch.jit.trace`` (and so export) fails on ``max_unpool2d`` in current PyTorch.
    The model pads its input to a multiple of 8, so every unpooled size is exactly double.
    """
    n, c, h, w = x.shape
    flat = x.new_zeros(n, c, 4 * h * w).scatter(2, indices.flatten(2), x.flatten(2))
    return flat.view(n, c, 2 * h, 2 * w)


class UpsamplingBottleneck(nn.Module):
    """``(N, C_in, H, W)`` + indices -> ``(N, C_out, 2H, 2W)``.

    Shortcut: 1×1 conv + BN to ``C_out``, then max-unpooling with the indices stored by the
    matching downsampling block; branch: 1×1, 3×3 stride-2 transposed conv, 1×1.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        inner = max(in_channels // 4, 1)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                      nn.BatchNorm2d(out_channels))
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(inner, inner, 3, stride=2, padding=1, output_padding=1, bias=False),
            nn.BatchNorm2d(inner), nn.ReLU(inplace=True),
            nn.Conv2d(inner, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
            nn.Dropout2d(dropout),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, indices: Tensor) -> Tensor:
        shortcut = max_unpool(self.shortcut(x), indices)
        return self.act(shortcut + self.branch(x))


class ENet(nn.Module):
    """ENet (Paszke et al. 2016): ``(N, in_channels, H, W)`` -> ``(N, num_classes, H, W)``, any H, W.

    Layout of Table 1 with ``initial_channels=16, stage_channels=(64, 128)``: initial block
    (16, 1/2); stage 1: downsampling + 4 regular (64, 1/4, dropout 0.01); stages 2 and 3:
    ``STAGE2_PLAN`` (128, 1/8, stage 2 starting with a downsampling block); stage 4:
    upsampling + 2 regular (64, 1/4); stage 5: upsampling + 1 regular (16, 1/2); a 2×2
    stride-2 transposed convolution to ``num_classes`` at full size. Inputs are padded to a
    multiple of 8 and the logits cropped back.
    """

    def __init__(self, *, num_classes: int, in_channels: int = 3, initial_channels: int = 16,
                 stage_channels: Sequence[int] = (64, 128), stage1_repeats: int = 4,
                 dropout: Sequence[float] = (0.01, 0.1)) -> None:
        super().__init__()
        if len(stage_channels) != 2 or len(dropout) != 2:
            raise ConfigError(f"ENet stage_channels and dropout take two values (stage 1, stages 2+), "
                              f"got {list(stage_channels)} and {list(dropout)}")
        c0, (c1, c2), (p1, p2) = initial_channels, stage_channels, dropout
        self.initial = InitialBlock(in_channels, c0)
        self.down1 = DownsamplingBottleneck(c0, c1, dropout=p1)
        self.stage1 = nn.Sequential(*(Bottleneck(c1, dropout=p1) for _ in range(stage1_repeats)))
        self.down2 = DownsamplingBottleneck(c1, c2, dropout=p2)
        # Stage 3 repeats stage 2 without its downsampling block.
        self.stage23 = nn.Sequential(*(Bottleneck(c2, kind=k, value=v, dropout=p2) for k, v in STAGE2_PLAN * 2))
        self.up4 = UpsamplingBottleneck(c2, c1, dropout=p2)
        self.stage4 = nn.Sequential(*(Bottleneck(c1, dropout=p2, prelu=False) for _ in range(2)))
        self.up5 = UpsamplingBottleneck(c1, c0, dropout=p2)
        self.stage5 = Bottleneck(c0, dropout=p2, prelu=False)
        self.fullconv = nn.ConvTranspose2d(c0, num_classes, 2, stride=2)
        self.config: dict = {}

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        # Replicate, not zero, padding: ONNX Runtime fuses a zero Pad into the initial block's
        # MaxPool and then rejects pads larger than the 2x2 kernel (odd input sizes failed).
        x = self.initial(F.pad(x, (0, (-w) % 8, 0, (-h) % 8), mode="replicate"))
        x, idx1 = self.down1(x)
        x = self.stage1(x)
        x, idx2 = self.down2(x)
        x = self.stage23(x)
        x = self.stage4(self.up4(x, idx2))
        x = self.stage5(self.up5(x, idx1))
        return self.fullconv(x)[..., :h, :w]


@register(MODELS, "enet")
def enet(*, num_classes: int, in_channels: int = 3, initial_channels: int = 16,
         stage_channels: list[int] | None = None, stage1_repeats: int = 4) -> ENet:
    """ENet (Paszke et al. 2016, arXiv:1606.02147): real-time bottleneck encoder + max-unpooling decoder."""
    return ENet(num_classes=num_classes, in_channels=in_channels, initial_channels=initial_channels,
                stage_channels=tuple(stage_channels or (64, 128)), stage1_repeats=stage1_repeats)
