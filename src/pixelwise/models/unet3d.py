"""3D U-Net (Çiçek, Abdulkadir, Lienkamp, Brox & Ronneberger, MICCAI 2016, arXiv:1606.06650).

What is special here, against the 2D U-Net: every operation is volumetric (3×3×3
convolutions, 2×2×2 max-pooling, 2×2×2 up-convolutions, a 1×1×1 classifier), batch norm
precedes every ReLU, and each analysis level *doubles the channels before pooling*
instead of after it (the paper's Fig. 1: 32 -> 64, pool, 64 -> 128, pool, 128 -> 256,
pool, 256 -> 512), which avoids bottlenecks. The up-convolution keeps the channels
(512 -> 512) and the two synthesis convolutions halve them after the concatenation.

Convolutions are padded (the paper uses valid convolutions and predicts a smaller
centre); inputs of any D×H×W are zero-padded to a multiple of ``2^depth`` and the
output cropped back. This is its own module: ``SegmentationModel`` is 2D.
With ``in_channels=3, num_classes=3`` the paper configuration has 19,074,627 parameters:
the paper's 19,069,955 (convolutions with bias, up-convolutions without) plus 4,672
batch-norm scales and shifts, which the paper's figure leaves out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import MODELS, register


class ConvBNReLU3d(nn.Sequential):
    """``Conv3d(3×3×3, padded) -> BatchNorm3d -> ReLU``: ``(N, C_in, D, H, W)`` -> ``(N, C_out, D, H, W)``.

    The convolution keeps its bias, as in the paper's Caffe network (this is what its
    parameter count includes), although batch norm makes it redundant.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv3d(in_channels, out_channels, 3, padding=1), nn.BatchNorm3d(out_channels),
                         nn.ReLU(inplace=True))


def channel_plan(base_channels: int, depth: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """The (first conv, second conv) output widths of each analysis level and each synthesis level.

    Analysis level ``i`` goes ``b·2^i -> b·2^(i+1)`` (level 0: ``b -> 2b``); synthesis levels,
    deepest first, have two convolutions of ``b·2^(i+1)``. ``base_channels=32, depth=3`` gives
    ``[(32, 64), (64, 128), (128, 256), (256, 512)]`` and ``[(256, 256), (128, 128), (64, 64)]``.
    """
    analysis = [(base_channels * 2**i, base_channels * 2**(i + 1)) for i in range(depth + 1)]
    synthesis = [(base_channels * 2**(i + 1),) * 2 for i in range(depth - 1, -1, -1)]
    return analysis, synthesis


class UNet3D(nn.Module):
    """3D U-Net: ``(N, C_in, D, H, W)``, any D, H, W -> logits ``(N, num_classes, D, H, W)``.

    Args:
        in_channels: input channels (3 in the paper's Xenopus kidney data).
        num_classes: output classes (3 in the paper).
        base_channels: width of the first convolution (32 in the paper).
        depth: number of 2×2×2 max-pools (3 in the paper).
    """

    def __init__(self, *, in_channels: int = 3, num_classes: int = 3, base_channels: int = 32, depth: int = 3) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1:
            raise ValueError(f"UNet3D needs depth >= 1 and base_channels >= 1, got depth={depth}, "
                             f"base_channels={base_channels}")
        analysis, synthesis = channel_plan(base_channels, depth)
        self.down = nn.ModuleList()
        channels = in_channels
        for first, second in analysis:
            self.down.append(nn.Sequential(ConvBNReLU3d(channels, first), ConvBNReLU3d(first, second)))
            channels = second
        self.ups, self.up_blocks = nn.ModuleList(), nn.ModuleList()
        for k, (first, second) in enumerate(synthesis):
            skip = analysis[depth - 1 - k][1]
            # Keeps the width (Fig. 1). No bias: the paper's parameter count only matches without it.
            self.ups.append(nn.ConvTranspose3d(channels, channels, 2, stride=2, bias=False))
            self.up_blocks.append(nn.Sequential(ConvBNReLU3d(channels + skip, first), ConvBNReLU3d(first, second)))
            channels = second
        self.classifier = nn.Conv3d(channels, num_classes, 1)
        self.pool = nn.MaxPool3d(2)
        self.stride = 2**depth
        self.config: dict = {}

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"UNet3D expects (N, C, D, H, W), got shape {tuple(x.shape)}; add the missing "
                             f"batch/channel axis with x[None] or use a 2D model for images")
        d, h, w = x.shape[-3:]
        pads = [(-s) % self.stride for s in (d, h, w)]
        if any(pads):
            x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
        skips = []
        for i, block in enumerate(self.down):
            x = block(self.pool(x) if i else x)
            skips.append(x)
        for k, (up, block) in enumerate(zip(self.ups, self.up_blocks)):
            x = block(torch.cat([skips[-2 - k], up(x)], dim=1))
        return self.classifier(x)[..., :d, :h, :w]


@register(MODELS, "unet3d")
def unet3d(*, num_classes: int, in_channels: int = 3, base_channels: int = 32, depth: int = 3) -> UNet3D:
    """3D U-Net (Çiçek et al. 2016) for volumes ``(N, C, D, H, W)``.

    Paper configuration: ``in_channels=3, num_classes=3, base_channels=32, depth=3``
    (19.07 M parameters, 19,069,955 without batch norm as in the paper).
    """
    return UNet3D(in_channels=in_channels, num_classes=num_classes, base_channels=base_channels, depth=depth)
