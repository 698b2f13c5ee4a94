"""Gated-SCNN (Takikawa, Acuna, Jampani & Fidler, "Gated-SCNN: Gated Shape CNNs for
Semantic Segmentation", ICCV 2019, arXiv:1907.05740).

What is special here: a second, thin *shape stream* runs beside the encoder (the regular
stream) at full image resolution and predicts semantic boundaries only. It sees the
encoder's first-layer features and is steered by Gated Convolutional Layers (GCL): at
each GCL an attention map α = σ(conv1x1(s ‖ r)) computed from the shape features s and a
deeper regular-stream feature r decides which shape features matter (edges of objects,
not texture). The boundary map, together with the image gradient magnitude, is fused
with the ASPP context of the regular stream before the classifier. In training mode the
model returns the boundary logits as well, for the dual-task loss in
:mod:`pixelwise.losses.gscnn_loss`.

Differences from the paper, on purpose:

- Image gradients: the paper uses Canny edges; here a Sobel gradient magnitude of the
  grey image, computed in torch (no OpenCV, exportable), divided by its per-image maximum.
- Regular stream: any encoder with 4+ stages at output stride 8 (ResNet-50 by default;
  the paper uses WideResNet-38 or ResNet-50/101). The shape stream takes the first
  encoder feature; its three GCLs are steered by the last three encoder stages.
- Fusion: the edge branch (1×1 ConvNormAct of the fused boundary/gradient map, max-pooled
  to stride 8) is concatenated with the ASPP output and projected by a 1×1 ConvNormAct,
  then a DeepLab v3+ decoder (stride-4 features, two 3×3 convolutions) gives the scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders import build_encoder
from ..errors import ConfigError
from ..layers import ASPP, ConvNormAct
from ..registry import MODELS, register
from .heads import AuxHead, SegmentationHead
from .model import SegmentationOutput, pad_to_multiple


def sobel_magnitude(x: Tensor) -> Tensor:
    """Image gradient magnitude: ``(N, C, H, W)`` -> ``(N, 1, H, W)`` in [0, 1].

    The channel mean is filtered with 3×3 Sobel kernels (replicate padding, so the image
    border is not an edge); the magnitude is divided by its per-image maximum so the map
    does not depend on the input's scale or normalisation. A fixed input, like the
    paper's Canny edges: no gradient flows through it.
    """
    with torch.no_grad():
        grey = x.mean(dim=1, keepdim=True)
        kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device, dtype=x.dtype)
        kernels = torch.stack([kx, kx.t()]).unsqueeze(1)  # (2, 1, 3, 3): d/dx, d/dy
        g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernels)
        mag = g.square().sum(dim=1, keepdim=True).sqrt()
        return mag / (mag.amax(dim=(-2, -1), keepdim=True) + 1e-6)


class GatedConv(nn.Module):
    """Gated Convolutional Layer (GCL, Sec. 3.1): ``(N, C, H, W)`` shape features ``s`` and
    ``(N, 1, H, W)`` regular-stream map ``r`` -> ``(N, C, H, W)``.

    α = σ(conv1x1(BN(s ‖ r))) is one attention value per pixel; the output is
    ``conv1x1(s ⊙ (α + 1))`` with ``residual=True`` (the paper's Eq. 2, ŝ = s ⊙ α + s, so
    the gate can stress features but never silence the stream at initialisation), or
    ``conv1x1(s ⊙ α)`` with ``residual=False`` (a hard gate: α = 0 blocks, α = 1 passes).
    The batch norm on the concatenation puts both streams on one scale before gating.
    """

    def __init__(self, channels: int, *, residual: bool = True) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.BatchNorm2d(channels + 1), nn.Conv2d(channels + 1, 1, 1))
        self.conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.residual = residual

    def attention(self, s: Tensor, r: Tensor) -> Tensor:
        """α ``(N, 1, H, W)`` in (0, 1)."""
        return torch.sigmoid(self.gate(torch.cat([s, r], dim=1)))

    def forward(self, s: Tensor, r: Tensor) -> Tensor:
        alpha = self.attention(s, r)
        return self.conv(s * (alpha + 1) if self.residual else s * alpha)


class ResidualBlock(nn.Module):
    """Basic ResNet block (two 3×3 convolutions with batch norm, identity skip); shape kept."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvNormAct(channels, channels, 3), ConvNormAct(channels, channels, 3, act=False))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class ShapeStream(nn.Module):
    """Residual blocks interleaved with GCLs, at the resolution of ``size`` (the input).

    ``forward(first, gates, size)``: the first encoder feature ``(N, C_0, h, w)``, three
    deeper features ``(N, C_i, h_i, w_i)`` and the output size ``(H, W)`` ->
    boundary logits ``(N, 1, H, W)``.

    Args:
        in_channels: channels of the first encoder feature.
        gate_channels: channels of the three features that steer the GCLs.
        widths: shape-stream width at the start and after each GCL (64, 32, 16, 8 as in
            the paper's released model; the stream is deliberately thin).
    """

    def __init__(self, in_channels: int, gate_channels: Sequence[int], *,
                 widths: Sequence[int] = (64, 32, 16, 8), residual_gates: bool = True) -> None:
        super().__init__()
        if len(widths) != len(gate_channels) + 1:
            raise ConfigError(f"shape-stream widths {list(widths)} need one entry more than the "
                              f"{len(gate_channels)} gating features")
        self.stem = nn.Conv2d(in_channels, widths[0], 1)
        # Each deeper feature is squeezed to one channel: the GCL needs "where", not "what".
        self.gate_inputs = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in gate_channels)
        self.blocks = nn.ModuleList(ResidualBlock(w) for w in widths[:-1])
        self.reduce = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in pairwise(widths))
        self.gates = nn.ModuleList(GatedConv(w, residual=residual_gates) for w in widths[1:])
        self.out = nn.Conv2d(widths[-1], 1, 1)

    def forward(self, first: Tensor, gates: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        s = F.interpolate(self.stem(first), size=tuple(size), mode="bilinear", align_corners=False)
        for block, reduce, gcl, to_map, g in zip(self.blocks, self.reduce, self.gates, self.gate_inputs, gates):
            r = F.interpolate(to_map(g), size=tuple(size), mode="bilinear", align_corners=False)
            s = gcl(reduce(block(s)), r)
        return self.out(s)


class GSCNNFusion(nn.Module):
    """Fusion module: ASPP on the deepest feature + edge branch, then a v3+ decoder.

    ``forward(features, boundary_logits, gradient)`` -> ``(N, channels, H/4, W/4)``.
    """

    def __init__(self, encoder_channels: list[int], low_index: int, *, channels: int = 256,
                 rates: Sequence[int] = (12, 24, 36), low_level_channels: int = 48) -> None:
        super().__init__()
        self.low_index = low_index
        self.edge_attention = nn.Conv2d(2, 1, 1)  # boundary probability ‖ image gradient -> one map
        self.edge_branch = ConvNormAct(1, channels, 1)
        self.aspp = ASPP(encoder_channels[-1], channels, rates, dropout=0.1)
        self.project = ConvNormAct(2 * channels, channels, 1)
        self.reduce = ConvNormAct(encoder_channels[low_index], low_level_channels, 1)
        self.fuse = nn.Sequential(ConvNormAct(channels + low_level_channels, channels, 3),
                                  ConvNormAct(channels, channels, 3))
        self.out_channels = channels

    def forward(self, features: list[Tensor], boundary_logits: Tensor, gradient: Tensor) -> Tensor:
        deep = features[-1]
        edges = torch.sigmoid(self.edge_attention(torch.cat([torch.sigmoid(boundary_logits), gradient], dim=1)))
        # Max-pool, not bilinear, to stride 8: a one-pixel boundary must survive the reduction.
        factor = edges.shape[-1] // deep.shape[-1]
        edges = F.max_pool2d(edges, factor) if factor > 1 else edges
        x = self.project(torch.cat([self.aspp(deep), self.edge_branch(edges)], dim=1))
        low = self.reduce(features[self.low_index])
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([x, low], dim=1))


class GSCNN(nn.Module):
    """Gated-SCNN: ``(N, C_in, H, W)`` (any H, W) -> logits ``(N, num_classes, H, W)``.

    In training mode returns :class:`SegmentationOutput` with ``boundary`` (logits
    ``(N, 1, H, W)``) and, with an ``aux_head``, one auxiliary output.
    """

    def __init__(self, encoder: nn.Module, shape_stream: ShapeStream, fusion: GSCNNFusion, head: nn.Module,
                 aux_head: nn.Module | None = None, *, aux_weight: float = 0.4) -> None:
        super().__init__()
        self.encoder = encoder
        self.shape_stream = shape_stream
        self.fusion = fusion
        self.head = head
        self.aux_head = aux_head
        self.aux_weight = aux_weight
        self.pad_multiple = max(encoder.reductions)
        self.config: dict = {}

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.pad_multiple)
        size = x.shape[-2:]
        features = self.encoder(x)
        boundary = self.shape_stream(features[0], features[-3:], size)
        logits = self.head(self.fusion(features, boundary, sobel_magnitude(x)))
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)[..., :h, :w]
        if not self.training:
            return logits
        out = SegmentationOutput(logits, boundary=boundary[..., :h, :w])
        if self.aux_head is not None:
            aux = F.interpolate(self.aux_head(features), size=tuple(size), mode="bilinear", align_corners=False)
            out.aux, out.aux_weights = [aux[..., :h, :w]], [self.aux_weight]
        return out


@register(MODELS, "gscnn")
def gscnn(*, num_classes: int, in_channels: int = 3, encoder: str = "resnet50", encoder_weights: str | None = None,
          output_stride: int = 8, rates: list[int] | None = None, channels: int = 256, shape_widths: list[int] | None = None,
          residual_gates: bool = True, aux: bool = False, aux_weight: float = 0.4) -> GSCNN:
    """Gated-SCNN (Takikawa et al. 2019): dilated encoder (output stride 8) + gated shape stream + fusion.

    Train with :func:`pixelwise.losses.gscnn_loss.gscnn_loss` (segmentation CE, boundary
    BCE and the dual-task regulariser). ``channels``: width of ASPP and the fusion/decoder
    (256). ``aux=True`` adds an FCN head on the
    second-to-last stage, which the paper does not have.
    """
    if output_stride not in (8, 16):
        raise ConfigError(f"GSCNN output_stride must be 8 (the paper) or 16, got {output_stride}")
    enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights, output_stride=output_stride)
    if len(enc.out_channels) < 4 or 4 not in enc.reductions:
        raise ConfigError(f"GSCNN needs an encoder with 4+ stages and one at stride 4; {encoder!r} has reductions "
                          f"{enc.reductions}; use e.g. encoder='resnet50'")
    if rates is None:
        rates = [12, 24, 36] if output_stride == 8 else [6, 12, 18]
    shape = ShapeStream(enc.out_channels[0], enc.out_channels[-3:], widths=shape_widths or (64, 32, 16, 8),
                        residual_gates=residual_gates)
    fusion = GSCNNFusion(enc.out_channels, enc.reductions.index(4), channels=channels, rates=rates)
    aux_head = AuxHead(enc.out_channels[-2], num_classes) if aux else None
    return GSCNN(enc, shape, fusion, SegmentationHead(fusion.out_channels, num_classes), aux_head,
                 aux_weight=aux_weight)
