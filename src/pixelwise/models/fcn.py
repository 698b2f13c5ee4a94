"""FCN-32s / FCN-16s / FCN-8s (Long, Shelhamer & Darrell, CVPR 2015, arXiv:1411.4038).

What is special here: VGG16's fully connected layers become convolutions (fc6 a 7×7
convolution with 4096 channels, fc7 a 1×1), each of pool5/pool4/pool3 gets a 1×1 score
layer, coarse scores are upsampled by learnable transposed convolutions initialised to
bilinear interpolation and fused with the finer scores by summation (the "skip"
architecture). FCN-32s upsamples pool5 scores 32× at once; 16s adds pool4; 8s adds pool3.

Differences from the Caffe reference, and why: the reference pads conv1_1 by 100 pixels and
crops ("Crop" layers) to handle any size; here the input is padded to a multiple of 32 and
fc6 is padded by 3, which gives the same alignment without the 100-pixel border.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..encoders import build_encoder, load_state_file
from ..registry import MODELS, register
from .model import SegmentationModel


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weight ``(C, C, k, k)`` that makes a ``ConvTranspose2d(stride=k/2)`` a per-channel
    bilinear upsampler (each channel maps to itself only)."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float32)
    filt1d = 1 - (og - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = filt1d[:, None] * filt1d[None, :]
    return weight


def upsampler(channels: int, factor: int, *, learnable: bool = True) -> nn.ConvTranspose2d:
    """``factor``× transposed convolution (kernel 2f, stride f, padding f/2), bilinear init."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    up.weight.requires_grad_(learnable)
    return up


def score_layer(in_channels: int, num_classes: int, *, zero: bool) -> nn.Conv2d:
    """1×1 class-score convolution; the skip scores start at zero as in the paper, so a
    fresh FCN-8s initially predicts exactly what its coarser parent does."""
    conv = nn.Conv2d(in_channels, num_classes, 1)
    if zero:
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
    return conv


class FCNDecoder(nn.Module):
    """fc6/fc7 as convolutions, score layers and the skip fusion of FCN-``variant``s.

    ``forward``: encoder features (last three at reductions 8, 16, 32) -> class scores
    ``(N, num_classes, H, W)`` at the (padded) input size.
    """

    def __init__(self, encoder_channels: list[int], reductions: list[int], num_classes: int, *,
                 variant: int = 8, fc_channels: int = 4096, fc_kernel: int = 7, dropout: float = 0.5,
                 learn_final_upsampling: bool = False) -> None:
        super().__init__()
        if variant not in (8, 16, 32):
            raise ValueError(f"FCN variant must be 8, 16 or 32, got {variant}")
        if list(reductions[-3:]) != [8, 16, 32]:
            raise ValueError(f"FCN needs encoder features at strides 8, 16, 32; this encoder has {reductions}")
        self.variant = variant
        self.fc = nn.Sequential(
            nn.Conv2d(encoder_channels[-1], fc_channels, fc_kernel, padding=fc_kernel // 2),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(fc_channels, fc_channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )
        self.score_fr = score_layer(fc_channels, num_classes, zero=False)
        if variant <= 16:
            self.upscore2 = upsampler(num_classes, 2)
            self.score_pool4 = score_layer(encoder_channels[-2], num_classes, zero=True)
        if variant == 8:
            self.upscore_pool4 = upsampler(num_classes, 2)
            self.score_pool3 = score_layer(encoder_channels[-3], num_classes, zero=True)
        # The paper keeps the last upsampling fixed to bilinear; only the 2× steps learn.
        self.upscore_final = upsampler(num_classes, variant, learnable=learn_final_upsampling)

    def forward(self, features: list[Tensor]) -> Tensor:
        score = self.score_fr(self.fc(features[-1]))
        if self.variant <= 16:
            score = self.upscore2(score) + self.score_pool4(features[-2])
        if self.variant == 8:
            score = self.upscore_pool4(score) + self.score_pool3(features[-3])
        return self.upscore_final(score)

    def load_vgg16_classifier(self, state: dict[str, Tensor]) -> None:
        """Convolutionalise torchvision VGG16 ``classifier.0``/``classifier.3`` into fc6/fc7."""
        fc6, fc7 = self.fc[0], self.fc[3]
        with torch.no_grad():
            fc6.weight.copy_(state["classifier.0.weight"].view_as(fc6.weight))
            fc6.bias.copy_(state["classifier.0.bias"])
            fc7.weight.copy_(state["classifier.3.weight"].view_as(fc7.weight))
            fc7.bias.copy_(state["classifier.3.bias"])


def _fcn(variant: int, num_classes: int, in_channels: int, encoder: str, encoder_weights: str | None,
         fc_channels: int, dropout: float, learn_final_upsampling: bool) -> SegmentationModel:
    enc = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights)
    fc_kernel = 7 if encoder.startswith("vgg16") else 3
    dec = FCNDecoder(enc.out_channels, enc.reductions, num_classes, variant=variant, fc_channels=fc_channels,
                     fc_kernel=fc_kernel, dropout=dropout, learn_final_upsampling=learn_final_upsampling)
    if encoder.startswith("vgg16") and encoder_weights not in (None, "imagenet") and fc_channels == 4096:
        state = load_state_file(encoder_weights)
        if "classifier.0.weight" in state:
            dec.load_vgg16_classifier(state)
    return SegmentationModel(enc, dec, None, pad_multiple=32)


def _register(variant: int) -> None:
    name = f"fcn{variant}s"

    def build(*, num_classes: int, in_channels: int = 3, encoder: str = "vgg16", encoder_weights: str | None = None,
              fc_channels: int = 4096, dropout: float = 0.5, learn_final_upsampling: bool = False
              ) -> SegmentationModel:
        return _fcn(variant, num_classes, in_channels, encoder, encoder_weights, fc_channels, dropout,
                    learn_final_upsampling)

    build.__name__ = name
    build.__doc__ = (f"FCN-{variant}s (Long et al. 2015) on VGG16 by default; fc6/fc7 as convolutions. "
                     f"A torchvision vgg16 weight file as ``encoder_weights`` also fills fc6/fc7.")
    register(MODELS, name)(build)


for _variant in (32, 16, 8):
    _register(_variant)
