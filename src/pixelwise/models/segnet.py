"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017, arXiv:1511.00561).

What is special here: the decoder upsamples with the *max-pooling indices* stored by the
encoder (max-unpooling: each value goes back to the position its maximum came from, the
rest are zero), so upsampling has no parameters, and the sparse maps are densified by
convolutions that mirror the encoder. Encoder: the 13 convolutions of VGG16 with batch
norm; decoder: 13 mirrored convolutions with batch norm, the last one giving the K class
scores fed to a softmax.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..encoders.vgg import VGG16Encoder
from ..layers import ConvNormAct
from ..registry import MODELS, register
from .model import pad_to_multiple

# Decoder stages from the deepest: output channels of each 3×3 convolution after unpooling.
DECODER = [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64]]


class SegNetDecoder(nn.Module):
    """Max-unpooling with the encoder's indices, then ConvNormAct stacks mirroring VGG16.

    ``forward(feats, indices, sizes)``: the VGG16 encoder's pool outputs, argmax indices and
    pre-pool sizes -> ``(N, 64, H, W)``.
    """

    def __init__(self) -> None:
        super().__init__()
        stages, channels = [], 512
        for widths in DECODER:
            layers = []
            for width in widths:
                layers.append(ConvNormAct(channels, width, 3, norm="batch"))
                channels = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.out_channels = channels

    def forward(self, feats: list[Tensor], indices: list[Tensor], sizes: list) -> Tensor:
        x = feats[-1]
        for stage, idx, size in zip(self.stages, reversed(indices), reversed(sizes)):
            x = stage(F.max_unpool2d(x, idx, kernel_size=2, stride=2, output_size=size[-2:]))
        return x


class SegNet(nn.Module):
    """SegNet: ``(N, C_in, H, W)`` with any H, W -> logits ``(N, num_classes, H, W)``.

    The input is zero-padded to a multiple of 32 (five 2×2 pools) and the output cropped
    back. The classifier is a 3×3 convolution, the last of the decoder's 13 (as in the
    reference model, where it feeds the softmax directly).
    """

    def __init__(self, *, num_classes: int, in_channels: int = 3, encoder_weights: str | None = None) -> None:
        super().__init__()
        self.encoder = VGG16Encoder(in_channels=in_channels, batch_norm=True, weights=encoder_weights)
        self.decoder = SegNetDecoder()
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, 3, padding=1)
        self.config: dict = {}

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        feats, indices, sizes = self.encoder.forward_with_indices(pad_to_multiple(x, 32))
        return self.head(self.decoder(feats, indices, sizes))[..., :h, :w]


@register(MODELS, "segnet")
def segnet(*, num_classes: int, in_channels: int = 3, encoder_weights: str | None = None) -> SegNet:
    """SegNet (Badrinarayanan et al. 2017): VGG16-BN encoder, decoder upsampling with pooling indices.

    ``encoder_weights``: ``None``, ``"imagenet"`` (downloads) or a torchvision ``vgg16_bn`` file.
    """
    return SegNet(num_classes=num_classes, in_channels=in_channels, encoder_weights=encoder_weights)
