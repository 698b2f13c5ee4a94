"""DPT, Dense Prediction Transformer (Ranftl, Bochkovskiy & Koltun, ICCV 2021, arXiv:2103.13413).

What is special here: a plain ViT keeps one resolution (1/16) in every block, so DPT taps
four blocks (5/11/17/23 of ViT-L, 2/5/8/11 of ViT-B) and *reassembles* their tokens into
images: the readout (class) token is folded into every patch token ("project": concatenate
and Linear + GELU; "add"; or "ignore"), a 1×1 convolution sets the width (256/512/1024/1024
for ViT-L), and a 4×/2× transposed convolution, identity or stride-2 3×3 convolution puts
the four maps at strides 4/8/16/32. A 3×3 convolution brings each to 256 channels and
*fusion blocks* (RefineNet-like: two pre-activation residual conv units, 2× bilinear
upsampling with aligned corners, 1×1 projection) merge them from coarse to fine. The
segmentation head is 3×3 conv + BN + ReLU + dropout + 1×1 classifier and a 2× upsampling;
training adds an auxiliary head (no upsampling) on the same finest fused map, as transformers does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders.vit import Reassemble, ViTTokens, to_stride16
from ..errors import ConfigError
from ..registry import MODELS, register
from .model import SegmentationOutput, _resize_crop, pad_to_multiple

READOUTS = ("ignore", "add", "project")


class Readout(nn.Module):
    """Fold the class token into the patch grid: ``(N, D, h, w)``, ``(N, D)`` -> ``(N, D, h, w)``."""

    def __init__(self, dim: int, kind: str) -> None:
        super().__init__()
        if kind not in READOUTS:
            raise ConfigError(f"readout must be one of {READOUTS}, got {kind!r}")
        self.kind = kind
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU()) if kind == "project" else None

    def forward(self, grid: Tensor, cls: Tensor | None) -> Tensor:
        if self.kind == "ignore" or cls is None:
            return grid
        if self.kind == "add":
            return grid + cls[:, :, None, None]
        n, d, h, w = grid.shape
        tokens = grid.flatten(2).transpose(1, 2)
        tokens = self.project(torch.cat([tokens, cls[:, None].expand(-1, h * w, -1)], dim=-1))
        return tokens.transpose(1, 2).reshape(n, d, h, w)


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: ``x + conv(relu(conv(relu(x))))`` (3×3, optional BN)."""

    def __init__(self, channels: int, *, batch_norm: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(F.relu(x))))))


class FusionBlock(nn.Module):
    """``(coarser fused map, this level)`` -> fused map at 2× the resolution of this level."""

    def __init__(self, channels: int, *, batch_norm: bool = False, skip: bool = True) -> None:
        super().__init__()
        # The coarsest block has no skip input, so no skip unit (transformers builds one and never uses it).
        self.skip_unit = ResidualConvUnit(channels, batch_norm=batch_norm) if skip else None
        self.unit = ResidualConvUnit(channels, batch_norm=batch_norm)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is None and self.skip_unit is not None:  # smp: the coarsest level runs through both units
            x = self.skip_unit(x)
        elif skip is not None and self.skip_unit is not None:
            if skip.shape[-2:] != x.shape[-2:]:
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.skip_unit(skip)
        x = F.interpolate(self.unit(x), scale_factor=2.0, mode="bilinear", align_corners=True)
        return self.project(x)


class DPTDecoder(nn.Module):
    """Reassemble (readout, 1×1, resample) + 3×3 to ``fusion_channels`` + four fusion blocks:
    token grids of four blocks -> ``[fused at 1/16, 1/8, 1/4, 1/2]`` (coarse to fine).

    ``coarsest_unit=True`` gives the coarsest fusion block its first residual unit too, run on
    that level alone (smp's DPT; the reference code and transformers skip it)."""

    def __init__(self, dim: int, *, readout: str = "project", neck_channels: list[int] = (256, 512, 1024, 1024),
                 fusion_channels: int = 256, batch_norm: bool = False, coarsest_unit: bool = False) -> None:
        super().__init__()
        self.readouts = nn.ModuleList(Readout(dim, readout) for _ in neck_channels)
        self.reassemble = nn.ModuleList(Reassemble(dim, c, s) for c, s in zip(neck_channels, (4, 8, 16, 32)))
        self.convs = nn.ModuleList(nn.Conv2d(c, fusion_channels, 3, padding=1, bias=False) for c in neck_channels)
        self.fusion = nn.ModuleList(FusionBlock(fusion_channels, batch_norm=batch_norm, skip=i > 0 or coarsest_unit)
                                    for i in range(len(neck_channels)))
        self.out_channels = fusion_channels

    def forward(self, levels: list[tuple[Tensor, Tensor | None]]) -> list[Tensor]:
        maps = [conv(re(ro(g, c))) for (g, c), ro, re, conv in zip(levels, self.readouts, self.reassemble, self.convs)]
        fused, x = [], None
        for level, block in zip(maps[::-1], self.fusion):
            x = block(level) if x is None else block(x, level)
            fused.append(x)
        return fused


class DPTHead(nn.Sequential):
    """3×3 conv + BN + ReLU + dropout + 1×1 classifier: ``(N, C, h, w)`` -> ``(N, num_classes, h, w)``."""

    def __init__(self, channels: int, num_classes: int, *, dropout: float) -> None:
        super().__init__(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                         nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Conv2d(channels, num_classes, 1))


class DPT(nn.Module):
    """DPT for semantic segmentation: ``(N, C_in, H, W)`` (any size; padded to 32 and cropped) ->
    logits ``(N, num_classes, H, W)``; with the auxiliary head in training a :class:`SegmentationOutput`."""

    def __init__(self, tokens: ViTTokens, decoder: DPTDecoder, head: DPTHead, aux_head: DPTHead | None,
                 *, aux_weight: float = 0.4) -> None:
        super().__init__()
        self.encoder, self.decoder, self.head, self.aux_head = tokens, decoder, head, aux_head
        self.aux_weight = aux_weight
        self.pad_multiple = 32
        self.config: dict = {}

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 32)
        size = x.shape[-2:]
        levels = [(to_stride16(g, self.encoder.patch, size), c) for g, c in self.encoder(x)]
        fused = self.decoder(levels)
        logits = F.interpolate(self.head(fused[-1]), scale_factor=2.0, mode="bilinear", align_corners=True)
        logits = _resize_crop(logits, size, h, w)
        if self.training and self.aux_head is not None:
            return SegmentationOutput(logits, [_resize_crop(self.aux_head(fused[-1]), size, h, w)], [self.aux_weight])
        return logits


@register(MODELS, "dpt")
def dpt(*, num_classes: int, in_channels: int = 3, encoder: str = "vit_large_patch16_384",
        encoder_weights: str | None = None, indices: list[int] | None = None, readout: str = "project",
        neck_channels: list[int] | None = None, fusion_channels: int = 256, fusion_batch_norm: bool = False,
        aux: bool = True, aux_weight: float = 0.4, dropout: float = 0.1, pos_interpolation: str = "bicubic",
        layer_norm_eps: float | None = None, encoder_kwargs: dict | None = None,
        fusion_coarsest_unit: bool = False) -> DPT:
    """DPT (Ranftl et al. 2021): ViT (timm) + reassemble + fusion blocks; DPT-Large by default.

    ``indices`` default to four evenly spaced blocks (5/11/17/23 for ViT-L, 2/5/8/11 for ViT-B),
    ``neck_channels`` to 256/512/1024/1024 (ViT-L) or ``[D/8, D/4, D/2, D]``.
    ``pos_interpolation="bilinear"`` and ``layer_norm_eps=1e-12`` reproduce transformers' DPT;
    ``fusion_batch_norm=True, fusion_coarsest_unit=True, aux=False`` smp's (see :class:`DPTDecoder`).
    """
    timm_kwargs = dict(encoder_kwargs or {})
    if layer_norm_eps is not None:
        from functools import partial

        timm_kwargs["norm_layer"] = partial(nn.LayerNorm, eps=layer_norm_eps)
    tokens = ViTTokens(encoder, in_channels=in_channels, weights=encoder_weights, indices=indices,
                       pos_interpolation=pos_interpolation, timm_kwargs=timm_kwargs)
    d = tokens.embed_dim
    if neck_channels is None:
        neck_channels = [256, 512, 1024, 1024] if d == 1024 else [d // 8, d // 4, d // 2, d]
    if len(tokens.indices) != 4 or len(neck_channels) != 4:
        raise ConfigError(f"DPT taps 4 blocks: got indices {tokens.indices} and neck_channels {neck_channels}")
    dec = DPTDecoder(d, readout=readout, neck_channels=list(neck_channels), fusion_channels=fusion_channels,
                     batch_norm=fusion_batch_norm, coarsest_unit=fusion_coarsest_unit)
    head = DPTHead(fusion_channels, num_classes, dropout=dropout)
    aux_head = DPTHead(fusion_channels, num_classes, dropout=0.1) if aux else None
    return DPT(tokens, dec, head, aux_head, aux_weight=aux_weight)
