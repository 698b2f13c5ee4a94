"""U-Net++ (Zhou, Rahman Siddiquee, Tajbakhsh & Liang, DLMIA 2018, arXiv:1807.10165).

What is special here: the plain skip of U-Net is replaced by a *nested, dense* skip
pathway. Node ``X^{i,j}`` (level ``i``, column ``j``) is one double convolution over the
concatenation of every earlier node of its level and the upsampled node below-left::

    X^{i,j} = H(cat(X^{i,0}, ..., X^{i,j-1}, Up(X^{i+1,j-1})))      (paper, Eq. 1)

so a depth-``D`` network has ``D·(D+1)/2`` decoder nodes on top of the ``D+1`` encoder
nodes ``X^{i,0}``. Every top node ``X^{0,1..D}`` is a full-resolution U-Net of a
different depth; with ``deep_supervision=True`` each gets its own 1×1 classifier.

Deep supervision, as implemented: in training mode the output is
``SegmentationOutput(logits=head(X^{0,D}), aux=[head(X^{0,1}), ..., head(X^{0,D-1})],
aux_weights=[1.0, ...])``; summing the per-head losses with equal weights is the paper's
equal-weight loss over the four semantic levels. In eval mode the model returns the
paper's "accurate mode" (the mean of all heads) or, with ``prune_level=L``, its "fast
mode" (only the nodes ``X^{i,j}`` with ``i + j <= L`` are computed; the head on
``X^{0,L}`` answers). Without deep supervision there is one head on ``X^{0,D}``.

``encoder=None`` builds the paper's VGG-style encoder (two 3×3 conv per level, widths
32, 64, 128, 256, 512); any pixelwise encoder name works too, the nodes of level ``i``
then having ``decoder_channels[i]`` channels and the heads running at the encoder's first
stride, upsampled bilinearly to the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders import build_encoder
from ..errors import ConfigError
from ..layers import DoubleConv
from ..registry import MODELS, register
from .model import SegmentationOutput, _resize_crop, pad_to_multiple
from .unet import UNetEncoder


class NestedDecoder(nn.Module):
    """The nested dense skip pathways of U-Net++.

    Args:
        encoder_channels: channels of the encoder features ``X^{0,0} ... X^{D,0}``.
        reductions: their strides (each twice the previous one, or any integer ratio).
        node_channels: width of the decoder nodes of levels ``0 ... D-1``.
        norm: normalisation inside the node convolutions.
        upsampling: ``"transposed"`` (the paper's 2×2 up-convolution to the node width where
            strides double, else bilinear), ``"nearest"`` or ``"bilinear"`` (no parameters; the
            node below keeps its width; smp's decoder is nearest).
        last_node_channels: width of the last node of each level, ``X^{i,D-i}`` (default
            ``node_channels[i]``); smp's nodes are ``encoder_channels[i]`` wide inside a level
            and its ``decoder_channels`` give the last ones.

    ``forward(features, max_level)`` -> ``[X^{0,1}, ..., X^{0,max_level}]``, each
    ``(N, node_channels[0], H/r_0, W/r_0)``; only nodes with ``i + j <= max_level`` run.
    """

    def __init__(self, encoder_channels: list[int], reductions: list[int], node_channels: list[int], *,
                 norm: str = "batch", upsampling: str = "transposed",
                 last_node_channels: list[int] | None = None) -> None:
        super().__init__()
        depth = len(encoder_channels) - 1
        for name, widths in (("node_channels", node_channels), ("last_node_channels", last_node_channels)):
            if widths is not None and len(widths) != depth:
                raise ValueError(f"{name} needs one width per decoder level ({depth} for encoder channels "
                                 f"{encoder_channels}), got {len(widths)}: {widths}")
        if upsampling not in ("transposed", "nearest", "bilinear"):
            raise ValueError(f"upsampling must be 'transposed', 'nearest' or 'bilinear', got {upsampling!r}")
        self.depth, self.mode = depth, "nearest" if upsampling == "nearest" else "bilinear"
        self._widths = (list(encoder_channels), list(node_channels), list(last_node_channels or node_channels))
        width = self.node_width
        # ups[f"{i}_{j}"] brings X^{i+1,j-1} up to level i; blocks[f"{i}_{j}"] is H of node X^{i,j}.
        self.ups, self.blocks = nn.ModuleDict(), nn.ModuleDict()
        for j in range(1, depth + 1):
            for i in range(depth - j + 1):
                below = width(i + 1, j - 1)
                # The paper's 2x2 up-convolution when strides double, else interpolation.
                if upsampling == "transposed" and reductions[i + 1] == 2 * reductions[i]:
                    self.ups[f"{i}_{j}"] = nn.ConvTranspose2d(below, node_channels[i], 2, stride=2)
                    up_channels = node_channels[i]
                else:
                    self.ups[f"{i}_{j}"] = nn.Identity()
                    up_channels = below
                same_level = encoder_channels[i] + (j - 1) * node_channels[i]
                self.blocks[f"{i}_{j}"] = DoubleConv(same_level + up_channels, width(i, j), norm=norm)
        self.out_channels = width(0, depth)

    def node_width(self, i: int, j: int) -> int:
        """Channels of node ``X^{i,j}`` (``j = 0``: the encoder feature)."""
        encoder, inner, last = self._widths
        return encoder[i] if j == 0 else last[i] if i + j == self.depth else inner[i]

    @property
    def num_nodes(self) -> int:
        """Number of decoder nodes ``X^{i,j}``, ``j >= 1`` (``D·(D+1)/2``)."""
        return len(self.blocks)

    def forward(self, features: list[Tensor], max_level: int | None = None) -> list[Tensor]:
        max_level = self.depth if max_level is None else max_level
        # grid[i] holds X^{i,0}, X^{i,1}, ... as they are computed, column by column.
        grid = [[f] for f in features[: self.depth + 1]]
        for j in range(1, max_level + 1):
            for i in range(max_level - j + 1):
                up = self.ups[f"{i}_{j}"](grid[i + 1][j - 1])
                if up.shape[-2:] != grid[i][0].shape[-2:]:
                    up = (F.interpolate(up, size=grid[i][0].shape[-2:], mode="nearest") if self.mode == "nearest" else
                          F.interpolate(up, size=grid[i][0].shape[-2:], mode="bilinear", align_corners=False))
                grid[i].append(self.blocks[f"{i}_{j}"](torch.cat([*grid[i], up], dim=1)))
        return grid[0][1:]


class UNetPlusPlus(nn.Module):
    """U-Net++: encoder, nested decoder, one 1×1 head per supervised top node.

    ``top_channels``: one more double convolution (``top_channels`` wide) on the last top node
    upsampled from the encoder's stride 2 to stride 1, before the head (smp's last decoder
    block; not with deep supervision). ``head_kernel=3``: smp's 3×3 head.

    ``forward``: ``(N, C_in, H, W)``, any H, W -> ``(N, num_classes, H, W)`` in eval mode;
    in training mode with deep supervision a :class:`SegmentationOutput` (see module docs).
    """

    def __init__(self, encoder: nn.Module, decoder: NestedDecoder, num_classes: int, *,
                 deep_supervision: bool = False, prune_level: int | None = None, top_channels: int | None = None,
                 head_kernel: int = 1, norm: str = "batch") -> None:
        super().__init__()
        if prune_level is not None and not (deep_supervision and 1 <= prune_level <= decoder.depth):
            raise ValueError(f"prune_level={prune_level} needs deep_supervision=True and 1 <= prune_level <= "
                             f"{decoder.depth} (the depth); use None for the full network")
        if top_channels is not None and (deep_supervision or encoder.reductions[0] != 2):
            raise ConfigError(f"top_channels={top_channels} needs deep_supervision=False and an encoder whose first "
                              f"feature is at stride 2 (this one: {encoder.reductions[0]}); leave it None")
        self.encoder, self.decoder = encoder, decoder
        self.deep_supervision, self.prune_level = deep_supervision, prune_level
        self.top = DoubleConv(decoder.out_channels, top_channels, norm=norm) if top_channels else None
        widths = ([decoder.node_width(0, j) for j in range(1, decoder.depth + 1)] if deep_supervision
                  else [top_channels or decoder.out_channels])
        self.heads = nn.ModuleList(nn.Conv2d(w, num_classes, head_kernel, padding=head_kernel // 2) for w in widths)
        self.pad_multiple = max(encoder.reductions)
        self.config: dict = {}

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.pad_multiple)
        size = x.shape[-2:]
        features = self.encoder(x)
        if not self.deep_supervision:
            top = self.decoder(features)[-1]
            if self.top is not None:
                if self.decoder.mode == "nearest":
                    top = F.interpolate(top, size=size, mode="nearest")
                else:
                    top = F.interpolate(top, size=size, mode="bilinear", align_corners=False)
                top = self.top(top)
            return _resize_crop(self.heads[0](top), size, h, w)
        if not self.training and self.prune_level is not None:
            top = self.decoder(features, self.prune_level)
            return _resize_crop(self.heads[self.prune_level - 1](top[-1]), size, h, w)
        outs = [_resize_crop(head(node), size, h, w) for head, node in zip(self.heads, self.decoder(features))]
        if self.training:
            return SegmentationOutput(outs[-1], outs[:-1], [1.0] * (len(outs) - 1))
        return torch.stack(outs).mean(0)  # the paper's "accurate mode"


@register(MODELS, "unetplusplus")
def unetplusplus(*, num_classes: int, in_channels: int = 3, encoder: str | None = None,
                 encoder_weights: str | None = None, base_channels: int = 32, depth: int = 4,
                 norm: str = "batch", decoder_channels: list[int] | None = None, deep_supervision: bool = False,
                 prune_level: int | None = None, upsampling: str = "transposed",
                 last_node_channels: list[int] | None = None, top_channels: int | None = None,
                 head_kernel: int = 1) -> UNetPlusPlus:
    """U-Net++ (Zhou et al. 2018): nested dense skip pathways, optional deep supervision.

    ``encoder=None``: the paper's network (``base_channels=32, depth=4``: widths 32 ... 512,
    node widths equal to the encoder widths of their level, 2×2 up-convolutions); with
    ``norm="none"`` it has the paper's 9.04 M parameters (9,041,601 for 1 input channel and
    1 class). Batch norm is the default here for stable training from scratch. With an encoder (timm name,
    ``tv:NAME``, ``vgg16``) the node widths are ``decoder_channels`` (default
    ``32, 64, 128, 256, ...`` capped at 256, one per level below the deepest).
    smp's ``UnetPlusPlus`` (``convert --from smp``) is ``upsampling="nearest"``, ``decoder_channels``
    the encoder's widths, ``last_node_channels`` and ``top_channels`` from smp's ``decoder_channels``
    and ``head_kernel=3`` (see :class:`NestedDecoder`, :class:`UNetPlusPlus`).
    """
    if encoder is None:
        if encoder_weights is not None:
            raise ValueError("encoder_weights needs an encoder; U-Net++'s own encoder has no pretrained weights")
        enc: nn.Module = UNetEncoder(in_channels, base_channels=base_channels, depth=depth, norm=norm)
        channels = decoder_channels or enc.out_channels[:-1]
    else:
        enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights)
        channels = decoder_channels or [min(32 * 2**i, 256) for i in range(len(enc.out_channels) - 1)]
    dec = NestedDecoder(list(enc.out_channels), list(enc.reductions), list(channels), norm=norm,
                        upsampling=upsampling, last_node_channels=last_node_channels)
    return UNetPlusPlus(enc, dec, num_classes, deep_supervision=deep_supervision, prune_level=prune_level,
                        top_channels=top_channels, head_kernel=head_kernel, norm=norm)
