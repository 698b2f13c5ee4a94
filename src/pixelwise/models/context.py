"""Multi-scale context aggregation (Yu & Koltun, ICLR 2016, arXiv:1511.07122).

What is special here: the context module is a plain stack of 3×3 convolutions whose
dilations grow exponentially (1, 1, 2, 4, 8, 16, 1, Table 1), so its receptive field grows
exponentially (67×67 after layer 7) while the resolution and the number of parameters stay
fixed; it maps C feature maps (the front end's class scores) to C refined maps, so it can be
plugged onto any dense predictor. Every layer but the last 1×1 is followed by a ReLU
("pointwise truncation"). It is initialised to the identity (Sec. 3, Eq. 4/5) rather than
randomly, which the paper found necessary for training: at the start the module passes its
(truncated, i.e. non-negative part of the) input through unchanged.

"dilatednet" is the paper's front end + context module: VGG16 with pool4/pool5 made
resolution-preserving (output stride 8), conv5 dilated by 2, fc6 a 7×7 convolution dilated by
4 (4096 channels), fc7 1×1 (4096), a 1×1 "final" layer to C classes, the context module, and
bilinear 8× upsampling. Differences from the paper's Caffe front end, on purpose: pool4/pool5
are kept as 3×3 stride-1 max-pools (pixelwise's DeepLab-style ``vgg16`` encoder, not deleted
as in the paper), and convolutions are zero-padded instead of reflection-padding the input.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..encoders import build_encoder
from ..errors import ConfigError
from ..registry import MODELS, register
from .model import SegmentationModel

# Table 1: dilation of layers 1-7 (3×3); layer 8 is 1×1.
DILATIONS = (1, 1, 2, 4, 8, 16, 1)
# Table 1, "large" context network: output channels of layers 1-7 as multiples of C (layer 8: C).
LARGE_WIDTHS = (2, 2, 4, 8, 16, 32, 32)


def identity_init_(conv: nn.Conv2d, base: int, *, noise_std: float = 0.0) -> None:
    """Initialise ``conv`` (``c_in`` -> ``c_out`` channels) as the identity of Yu & Koltun Eq. 4/5.

    ``base`` is the module's channel count C. Output channel b gets weight ``C / c_out`` at the
    kernel centre from every input channel a with ``floor(a C / c_in) == floor(b C / c_out)`` and
    ``noise_std`` Gaussian noise elsewhere (Eq. 5; breaks the symmetry between the copies of a
    channel in the "large" module). For c_in = c_out = C this is exactly Eq. 4, ``1[t=0] 1[a=b]``.
    Biases start at zero.
    """
    c_out, c_in, kh, kw = conv.weight.shape
    with torch.no_grad():
        if noise_std > 0:
            conv.weight.normal_(0.0, noise_std)
        else:
            conv.weight.zero_()
        groups_in = torch.arange(c_in) * base // c_in
        groups_out = torch.arange(c_out) * base // c_out
        match = (groups_out[:, None] == groups_in[None, :]).to(conv.weight.dtype)
        # Each of a channel's c_in/C copies carries x·C/c_in, so a weight of C/c_out hands x·C/c_out
        # on to each of its c_out/C copies: the last layer (c_out = C) gives back x exactly.
        conv.weight[:, :, kh // 2, kw // 2] = match * (base / c_out)
        if conv.bias is not None:
            conv.bias.zero_()


class ContextModule(nn.Sequential):
    """The context module of Table 1: ``(N, C, H, W)`` -> ``(N, C, H, W)``.

    Layers 1-7: 3×3 convolutions with dilations ``DILATIONS`` and ReLU; layer 8: 1×1, no ReLU.
    ``variant="basic"``: C channels throughout (64 C² parameters); ``"large"``: widths
    ``LARGE_WIDTHS`` × C. ``identity_init=True`` (the paper's) makes the fresh module copy its
    input's non-negative part; ``False`` uses PyTorch's default random initialisation.
    """

    def __init__(self, channels: int, *, variant: str = "basic", identity_init: bool = True,
                 noise_std: float = 1e-3) -> None:
        if variant not in ("basic", "large"):
            raise ConfigError(f"context module variant must be 'basic' or 'large', got {variant!r}")
        widths = [channels] * 7 if variant == "basic" else [w * channels for w in LARGE_WIDTHS]
        layers: list[nn.Module] = []
        c_in = channels
        for width, dilation in zip(widths, DILATIONS):
            layers += [nn.Conv2d(c_in, width, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True)]
            c_in = width
        layers.append(nn.Conv2d(c_in, channels, 1))
        super().__init__(*layers)
        self.dilations = [m.dilation[0] for m in self if isinstance(m, nn.Conv2d)]
        if identity_init:
            for m in self:
                if isinstance(m, nn.Conv2d):
                    identity_init_(m, channels, noise_std=noise_std if variant == "large" else 0.0)


class DilatedFrontEnd(nn.Sequential):
    """fc6 (7×7, dilation 4), fc7 (1×1), each ReLU + dropout 0.5, and the 1×1 "final" layer to
    ``num_classes``, on the last encoder feature: ``(N, C_enc, H/8, W/8)`` -> ``(N, num_classes, H/8, W/8)``."""

    def __init__(self, in_channels: int, num_classes: int, *, fc_channels: int = 4096, dropout: float = 0.5) -> None:
        super().__init__(
            nn.Conv2d(in_channels, fc_channels, 7, padding=12, dilation=4), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv2d(fc_channels, fc_channels, 1), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Conv2d(fc_channels, num_classes, 1),
        )

    def forward(self, features: list[Tensor]) -> Tensor:
        return super().forward(features[-1])


@register(MODELS, "dilatednet")
def dilatednet(*, num_classes: int, in_channels: int = 3, encoder_weights: str | None = None,
               context: str = "basic", fc_channels: int = 4096, identity_init: bool = True) -> SegmentationModel:
    """Dilated convolutions (Yu & Koltun, ICLR 2016, arXiv:1511.07122): dilated VGG16 front end + context module.

    ``context``: ``"basic"``, ``"large"`` or ``"none"`` (the front end alone). Output: bilinear 8× upsampling.
    """
    if context not in ("basic", "large", "none"):
        raise ConfigError(f"dilatednet context must be 'basic', 'large' or 'none', got {context!r}")
    enc = build_encoder("vgg16", in_channels=in_channels, weights=encoder_weights, output_stride=8)
    front = DilatedFrontEnd(enc.out_channels[-1], num_classes, fc_channels=fc_channels)
    head = nn.Identity() if context == "none" else ContextModule(num_classes, variant=context,
                                                                 identity_init=identity_init)
    return SegmentationModel(enc, front, head, pad_multiple=8)

