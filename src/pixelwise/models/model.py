"""SegmentationModel: encoder + decoder + head, for any input size."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.experimental.symbolic_shapes import statically_known_true


@dataclass
class SegmentationOutput:
    """What a model returns in training mode when it has extra outputs.

    ``logits``: ``(N, C, H, W)`` at input size; ``aux``: auxiliary logits (deep supervision,
    auxiliary heads), each ``(N, C, H, W)`` at input size, with their loss weights;
    ``boundary``: a boundary-probability logit map ``(N, 1, H, W)`` for models with a shape
    stream (Gated-SCNN), trained by a boundary loss of its own.
    """

    logits: Tensor
    aux: list[Tensor] = field(default_factory=list)
    aux_weights: list[float] = field(default_factory=list)
    boundary: Tensor | None = None


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pad the bottom/right of ``(N, C, H, W)`` so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pw, 0, ph)) if ph or pw else x


class SegmentationModel(nn.Module):
    """A semantic segmentation network built from parts.

    ``forward(x)``: ``(N, C_in, H, W)`` with any H, W -> logits ``(N, num_classes, H, W)``.
    The input is padded to ``pad_multiple`` (the encoder's largest stride) and the output
    cropped back, so odd sizes work. In training mode with an ``aux_head`` the result is a
    :class:`SegmentationOutput`; in eval mode always a plain tensor.

    Args:
        encoder: an ``Encoder`` (list of features; ``out_channels``, ``reductions``).
        decoder: maps the feature list to one map ``(N, C_dec, H/r, W/r)``.
        head: maps the decoder output to ``num_classes`` channels (``None``: the decoder
            already outputs class scores). Its output is resized to the input if smaller.
        aux_head: optional; maps the feature list to auxiliary logits (training only).
        aux_weight: loss weight of the auxiliary logits.
        upsample_align_corners: the final bilinear resize with ``align_corners=True`` (smp's heads
            upsample that way; a converted smp model sets it so its logits are smp's).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, head: nn.Module | None = None,
                 aux_head: nn.Module | None = None, *, aux_weight: float = 0.4,
                 pad_multiple: int | None = None, upsample_align_corners: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.head = head if head is not None else nn.Identity()
        self.aux_head = aux_head
        self.aux_weight = aux_weight
        self.pad_multiple = pad_multiple or max(encoder.reductions)
        self.align_corners = upsample_align_corners
        self.config: dict = {}

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.pad_multiple)
        size = x.shape[-2:]
        features = self.encoder(x)
        logits = _resize_crop(self.head(self.decoder(features)), size, h, w, self.align_corners)
        if self.training and self.aux_head is not None:
            aux = _resize_crop(self.aux_head(features), size, h, w, self.align_corners)
            return SegmentationOutput(logits, [aux], [self.aux_weight])
        return logits


def _resize_crop(y: Tensor, padded_size, h: int, w: int, align_corners: bool = False) -> Tensor:
    # Resize to the padded size, not the input size, so the crop stays pixel-aligned. Asked as
    # "provably equal?" so that torch.export, which cannot always decide a symbolic comparison
    # (SegFormer's 1/4-size head), resizes rather than specialising the graph to one input size.
    if not (_provably_equal(y.shape[-2], padded_size[0]) and _provably_equal(y.shape[-1], padded_size[1])):
        y = F.interpolate(y, size=tuple(padded_size), mode="bilinear", align_corners=align_corners)
    return y[..., :h, :w]


def _provably_equal(a, b) -> bool:
    """``a == b`` for sizes: ints compare, torch.export's symbolic sizes must be provably equal (an
    undecidable comparison is "no", so the graph resizes instead of specialising), and
    torch.jit.trace's traced sizes are fixed at the traced size."""
    same = a == b
    if isinstance(same, bool):
        return same
    if isinstance(same, torch.SymBool):
        return statically_known_true(same)
    return bool(same)
