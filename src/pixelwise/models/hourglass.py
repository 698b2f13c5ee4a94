"""Stacked hourglass networks (Newell, Yang & Deng, ECCV 2016, arXiv:1603.06937).

What is special here: one "hourglass" pools down to a very low resolution and comes back
up symmetrically, adding at every scale a skip branch computed at that scale (Fig. 3), so
each output pixel sees both local detail and the whole image; everything is built from one
block, the pre-activation bottleneck residual module (Fig. 4). Several hourglasses are
stacked and each one predicts (intermediate supervision): its prediction is mapped back to
the feature width by a 1×1 convolution and added, with the stack's own features (another
1×1), to the next stack's input ("re-injection", Fig. 4 right), so later stacks can
re-evaluate earlier estimates in context.

Output: every stack predicts at 1/4 of the input (after the stem's stride-2 convolution and
max-pool, Sec. 3.1); the logits are bilinearly upsampled to the input size. In training mode
the earlier stacks' predictions come back as ``aux`` with weight 1.0 each (the paper applies
the same loss to every stack) and the last stack's as ``logits``. The same network serves
semantic segmentation (``num_classes`` logit maps + cross-entropy) and keypoints (one heatmap
per joint + mean squared error against Gaussian targets, as in the paper): only the loss differs.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import MODELS, register
from .model import SegmentationOutput, pad_to_multiple


class Residual(nn.Module):
    """Pre-activation bottleneck (Fig. 4 left): BN-ReLU-1×1 (C/2), BN-ReLU-3×3 (C/2), BN-ReLU-1×1 (C),
    plus the input (through a 1×1 convolution when the width changes). ``(N, C_in, H, W)`` -> ``(N, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = max(out_channels // 2, 1)
        self.branch = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True), nn.Conv2d(in_channels, mid, 1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, out_channels, 1),
        )
        self.skip = nn.Identity() if in_channels == out_channels else nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.branch(x)


class Hourglass(nn.Module):
    """One hourglass of ``depth`` levels, defined recursively (Fig. 3): ``(N, C, H, W)`` -> ``(N, C, H, W)``,
    H and W divisible by ``2**depth``.

    ``out = skip(x) + upsample2x(post(inner(pre(maxpool(x)))))`` where ``inner`` is an hourglass of
    ``depth - 1`` levels, or one residual module at the bottom.
    """

    def __init__(self, channels: int, depth: int) -> None:
        super().__init__()
        self.skip = Residual(channels, channels)
        self.pre = Residual(channels, channels)
        self.inner = Hourglass(channels, depth - 1) if depth > 1 else Residual(channels, channels)
        self.post = Residual(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        low = self.post(self.inner(self.pre(F.max_pool2d(x, 2))))
        return self.skip(x) + F.interpolate(low, scale_factor=2.0, mode="nearest")


class StackedHourglass(nn.Module):
    """Stacked hourglass network: ``(N, in_channels, H, W)`` -> ``(N, num_classes, H, W)`` for any H, W.

    Stem (Sec. 3.1): 7×7 stride-2 conv (64) + BN + ReLU, residual to ``channels // 2``, max-pool,
    two residuals to ``channels``. Each stack: hourglass, residual, 1×1 conv-BN-ReLU, 1×1 to
    ``num_classes``; between stacks the features and the prediction re-enter through 1×1 convs.
    Inputs are padded to a multiple of ``4 · 2**depth`` and the output cropped back.
    Training mode with ``num_stacks > 1``: :class:`SegmentationOutput` with the earlier stacks in ``aux``.
    """

    def __init__(self, *, num_classes: int, in_channels: int = 3, channels: int = 256, num_stacks: int = 8,
                 depth: int = 4, aux_weight: float = 1.0) -> None:
        super().__init__()
        if num_stacks < 1 or depth < 1:
            raise ConfigError(f"hourglass needs num_stacks >= 1 and depth >= 1, got {num_stacks} and {depth}")
        stem_channels = min(64, channels)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_channels, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem_channels), nn.ReLU(inplace=True),
            Residual(stem_channels, channels // 2), nn.MaxPool2d(2, 2),
            Residual(channels // 2, channels // 2), Residual(channels // 2, channels),
        )
        self.stacks = nn.ModuleList(
            nn.Sequential(Hourglass(channels, depth), Residual(channels, channels),
                          nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                          nn.ReLU(inplace=True))
            for _ in range(num_stacks))
        self.predict = nn.ModuleList(nn.Conv2d(channels, num_classes, 1) for _ in range(num_stacks))
        # The last stack feeds nothing forward, so it has no re-injection convolutions.
        self.reinject_features = nn.ModuleList(nn.Conv2d(channels, channels, 1) for _ in range(num_stacks - 1))
        self.reinject_predictions = nn.ModuleList(nn.Conv2d(num_classes, channels, 1) for _ in range(num_stacks - 1))
        self.pad_multiple = 4 * 2 ** depth
        self.aux_weight = aux_weight
        self.config: dict = {}

    def forward(self, x: Tensor) -> Tensor | SegmentationOutput:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.pad_multiple)
        size = x.shape[-2:]
        x = self.stem(x)
        predictions = []
        for i, stack in enumerate(self.stacks):
            features = stack(x)
            pred = self.predict[i](features)
            predictions.append(pred)
            if i < len(self.reinject_features):
                x = x + self.reinject_features[i](features) + self.reinject_predictions[i](pred)
        if not self.training:
            predictions = predictions[-1:]  # the earlier stacks are only supervised, never returned
        outputs = [F.interpolate(p, size=size, mode="bilinear", align_corners=False)[..., :h, :w]
                   for p in predictions]
        if self.training and len(outputs) > 1:
            return SegmentationOutput(outputs[-1], outputs[:-1], [self.aux_weight] * (len(outputs) - 1))
        return outputs[-1]


@register(MODELS, "hourglass")
def hourglass(*, num_classes: int, in_channels: int = 3, channels: int = 256, num_stacks: int = 8, depth: int = 4,
              aux_weight: float = 1.0) -> StackedHourglass:
    """Stacked hourglass (Newell et al., ECCV 2016, arXiv:1603.06937): stacked encoder-decoders with intermediate supervision."""
    return StackedHourglass(num_classes=num_classes, in_channels=in_channels, channels=channels,
                            num_stacks=num_stacks, depth=depth, aux_weight=aux_weight)
