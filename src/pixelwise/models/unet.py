"""U-Net (Ronneberger, Fischer & Brox, MICCAI 2015, arXiv:1505.04597).

What is special here: a contracting path of two 3×3 convolutions + ReLU and a 2×2
max-pool per level (64 -> 1024 channels), an expanding path that upsamples with a 2×2
up-convolution halving the channels, concatenates the skip feature of the same level and
applies two 3×3 convolutions, then a 1×1 classifier. Convolutions are padded so the
output has the input's size (the paper's overlap-tile cropping is then unnecessary).

``encoder=None`` builds the paper's network; any other encoder name gets the same
decoder on that encoder's features (bilinear upsampling + two ConvNormAct by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders import build_encoder
from ..errors import ConfigError
from ..layers import SCSE, AttentionGate, make_block
from ..registry import MODELS, register
from .heads import SegmentationHead
from .model import SegmentationModel


class UNetEncoder(nn.Module):
    """The paper's contracting path: ``depth`` max-pools, ``base·2^i`` channels at level i.

    ``forward``: ``(N, C, H, W)`` -> ``depth + 1`` features at reductions ``1, 2, ..., 2^depth``.
    """

    def __init__(self, in_channels: int, *, base_channels: int = 64, depth: int = 4, norm: str = "none",
                 block: str = "double") -> None:
        super().__init__()
        self.out_channels = [base_channels * 2**i for i in range(depth + 1)]
        self.reductions = [2**i for i in range(depth + 1)]
        blocks = [make_block(block, in_channels, base_channels, norm=norm)]
        for i in range(1, depth + 1):
            blocks.append(nn.Sequential(nn.MaxPool2d(2), make_block(block, self.out_channels[i - 1],
                                                                     self.out_channels[i], norm=norm)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


class UpBlock(nn.Module):
    """Upsample, concatenate a skip feature, two 3×3 convolutions.

    ``upsampling="transposed"`` is the paper's 2×2 up-convolution (to ``out_channels``);
    ``"bilinear"`` interpolates and lets the convolutions mix the channels. ``skip_channels=0``
    upsamples without a skip (used below an encoder whose first feature is at stride 2).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, scale: int,
                 upsampling: str, norm: str, block: str = "double", attention: bool = False,
                 scse: bool = False) -> None:
        super().__init__()
        self.scale = scale
        # Attention U-Net: the coarse decoder feature gates the skip before concatenation.
        self.gate = AttentionGate(skip_channels, in_channels) if attention and skip_channels else None
        if upsampling == "transposed" and scale == 2:
            self.up: nn.Module = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
            conv_in = out_channels + skip_channels
        elif upsampling in ("transposed", "bilinear", "nearest"):
            self.up = nn.Identity()
            conv_in = in_channels + skip_channels
        else:
            raise ValueError(f"upsampling must be 'transposed', 'bilinear' or 'nearest', got {upsampling!r}")
        self.mode = "nearest" if upsampling == "nearest" else "bilinear"
        self.conv = make_block(block, conv_in, out_channels, norm=norm)
        # smp's decoder_attention_type="scse": on the concatenation (when there is a skip) and on the output.
        self.scse_in = SCSE(conv_in) if scse and skip_channels else None
        self.scse_out = SCSE(out_channels) if scse else None

    def forward(self, x: Tensor, skip: Tensor | None, size: tuple[int, int]) -> Tensor:
        if self.gate is not None and skip is not None:
            skip = self.gate(skip, x)
        if isinstance(self.up, nn.ConvTranspose2d):
            x = self.up(x)
        if tuple(x.shape[-2:]) != size:
            x = (F.interpolate(x, size=size, mode="nearest") if self.mode == "nearest"
                 else F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
            if self.scse_in is not None:
                x = self.scse_in(x)
        x = self.conv(x)
        return self.scse_out(x) if self.scse_out is not None else x


class UNetDecoder(nn.Module):
    """The expanding path for any encoder: one ``UpBlock`` per skip, deepest first, then
    skip-less blocks until stride 1. ``decoder_channels[i]`` is the width of block i.

    ``forward``: features (reductions ``r_0 < ... < r_K``) -> ``(N, decoder_channels[-1], H, W)``.
    """

    def __init__(self, encoder_channels: list[int], reductions: list[int], decoder_channels: list[int], *,
                 upsampling: str = "bilinear", norm: str = "batch", block: str = "double",
                 attention: bool = False, scse: bool = False) -> None:
        super().__init__()
        extra = 0
        while reductions[0] > 2**extra:
            extra += 1
        needed = len(encoder_channels) - 1 + extra
        if len(decoder_channels) != needed:
            raise ValueError(f"decoder_channels needs {needed} entries for this encoder "
                             f"(reductions {reductions}), got {len(decoder_channels)}: {decoder_channels}")
        self.targets = [reductions[i] for i in range(len(reductions) - 2, -1, -1)]
        self.targets += [reductions[0] // 2**(j + 1) for j in range(extra)]
        blocks, channels, current = [], encoder_channels[-1], reductions[-1]
        for i, target in enumerate(self.targets):
            skip = encoder_channels[len(reductions) - 2 - i] if i < len(reductions) - 1 else 0
            blocks.append(UpBlock(channels, skip, decoder_channels[i], scale=current // target,
                                  upsampling=upsampling, norm=norm, block=block, attention=attention, scse=scse))
            channels, current = decoder_channels[i], target
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = channels
        self.num_skips = len(reductions) - 1

    def forward(self, features: list[Tensor]) -> Tensor:
        x = features[-1]
        for i, block in enumerate(self.blocks):
            skip = features[self.num_skips - 1 - i] if i < self.num_skips else None
            size = tuple(skip.shape[-2:]) if skip is not None else (x.shape[-2] * block.scale,
                                                                     x.shape[-1] * block.scale)
            x = block(x, skip, size)
        return x


def _unet(num_classes: int, in_channels: int, encoder: str | None, encoder_weights: str | None,
          base_channels: int, depth: int, norm: str | None, decoder_channels: list[int] | None,
          upsampling: str | None, block: str, attention: bool, head_kernel: int = 1,
          decoder_attention: str | None = None, encoder_depth: int | None = None) -> SegmentationModel:
    if decoder_attention not in (None, "scse"):
        raise ConfigError(f"decoder_attention must be None or 'scse', got {decoder_attention!r}")
    scse = decoder_attention == "scse"
    if encoder is None:
        if encoder_weights is not None:
            raise ValueError("encoder_weights needs an encoder; the paper's U-Net has no pretrained encoder")
        norm = norm or ("none" if block == "double" else "batch")
        enc: nn.Module = UNetEncoder(in_channels, base_channels=base_channels, depth=depth, norm=norm, block=block)
        channels = decoder_channels or enc.out_channels[-2::-1]
        dec = UNetDecoder(enc.out_channels, enc.reductions, list(channels), upsampling=upsampling or "transposed",
                          norm=norm, block=block, attention=attention, scse=scse)
    else:
        enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights)
        if encoder_depth is not None:
            enc = FirstLevels(enc, encoder_depth)
        if decoder_channels is None:
            decoder_channels = [256, 128, 64, 32, 16, 8][: len(enc.reductions) - 1 + _log2(enc.reductions[0])]
        dec = UNetDecoder(enc.out_channels, enc.reductions, list(decoder_channels),
                          upsampling=upsampling or "bilinear", norm=norm or "batch", block=block, attention=attention,
                          scse=scse)
    return SegmentationModel(enc, dec, SegmentationHead(dec.out_channels, num_classes, kernel_size=head_kernel))


@register(MODELS, "unet")
def unet(*, num_classes: int, in_channels: int = 3, encoder: str | None = None, encoder_weights: str | None = None,
         base_channels: int = 64, depth: int = 4, norm: str | None = None, decoder_channels: list[int] | None = None,
         upsampling: str | None = None, head_kernel: int = 1, decoder_attention: str | None = None,
         encoder_depth: int | None = None) -> SegmentationModel:
    """U-Net (Ronneberger et al. 2015). ``encoder=None``: the paper's network.

    Paper configuration: ``base_channels=64, depth=4`` (64 -> 1024 channels), no
    normalisation and transposed 2×2 up-convolutions; ``norm="batch"`` is the common modern
    variant. With an encoder (timm name, ``tv:NAME`` or ``vgg16``) the decoder has
    ``decoder_channels`` (default 256, 128, 64, 32, 16), batch norm and bilinear upsampling.
    ``upsampling="nearest"`` and ``head_kernel=3`` are smp's U-Net decoder and head (``convert --from smp``);
    ``decoder_attention="scse"`` adds smp's scSE blocks; ``encoder_depth`` keeps the first N encoder levels.
    """
    return _unet(num_classes, in_channels, encoder, encoder_weights, base_channels, depth, norm, decoder_channels,
                 upsampling, "double", False, head_kernel, decoder_attention, encoder_depth)


def _register_variant(name: str, block: str, attention: bool, doc: str) -> None:
    def build(*, num_classes: int, in_channels: int = 3, encoder: str | None = None,
              encoder_weights: str | None = None, base_channels: int = 64, depth: int = 4, norm: str | None = None,
              decoder_channels: list[int] | None = None, upsampling: str | None = None) -> SegmentationModel:
        return _unet(num_classes, in_channels, encoder, encoder_weights, base_channels, depth, norm,
                     decoder_channels, upsampling, block, attention)

    build.__name__, build.__doc__ = name, doc
    register(MODELS, name)(build)


_register_variant("resunet", "residual", False,
                  "ResUNet (Zhang et al. 2018): U-Net whose levels are pre-activated residual units.")
_register_variant("r2unet", "recurrent", False,
                  "R2U-Net (Alom et al. 2018): U-Net whose levels are recurrent residual (RRCNN) blocks, t=2.")
_register_variant("attention_unet", "double", True,
                  "Attention U-Net (Oktay et al. 2018): additive attention gates on the skip connections.")
_register_variant("attention_r2unet", "recurrent", True,
                  "Attention R2U-Net (Alom et al. 2018 + Oktay et al. 2018): RRCNN blocks and attention gates.")


class FirstLevels(nn.Module):
    """The first ``depth`` features of an encoder (smp's ``encoder_depth``); same contract."""

    def __init__(self, encoder: nn.Module, depth: int) -> None:
        super().__init__()
        if not 1 <= depth <= len(encoder.out_channels):
            raise ConfigError(f"encoder_depth must be 1..{len(encoder.out_channels)} for this encoder, got {depth}")
        self.body, self.depth = encoder, depth
        self.out_channels, self.reductions = list(encoder.out_channels[:depth]), list(encoder.reductions[:depth])

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.body(x)[: self.depth]


def _log2(n: int) -> int:
    return n.bit_length() - 1
