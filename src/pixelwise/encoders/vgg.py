"""VGG16 (Simonyan & Zisserman 2015, configuration D) as an encoder that can also return
max-pooling indices, as FCN (Long et al. 2015) and SegNet (Badrinarayanan et al. 2017) need."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import ENCODERS, register
from .base import adapt_input_conv, load_state_file

# Configuration D: channels per conv, "M" for a 2×2 max-pool.
VGG16_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16Encoder(nn.Module):
    """The 13 convolutions of VGG16 with its five max-pools.

    ``features`` is laid out exactly like torchvision's ``vgg16().features`` (same indices),
    so a torchvision ``vgg16`` / ``vgg16_bn`` weight file loads directly.

    ``forward``: ``(N, C, H, W)`` -> ``[pool1, ..., pool5]`` at reductions ``[2, 4, 8, 16, 32]``
    with channels ``[64, 128, 256, 512, 512]``; ``forward_with_indices`` also returns the
    argmax indices of each pool and the pre-pool sizes (for ``max_unpool2d``).
    """

    def __init__(self, *, in_channels: int = 3, batch_norm: bool = False, weights: str | None = None,
                 output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (8, 32):
            raise ConfigError(f"VGG16 supports output_stride 32 (FCN, SegNet) or 8 (DeepLab v1), got {output_stride}")
        layers: list[nn.Module] = []
        channels, pools, dilation = in_channels, 0, 1
        for item in VGG16_LAYERS:
            if item == "M":
                pools += 1
                if output_stride == 8 and pools >= 4:
                    # DeepLab v1 (Chen et al. 2015, Sec. 3.1): pool4/pool5 keep the resolution
                    # (3x3, stride 1) and the convolutions after them are dilated to keep their field of view.
                    layers.append(nn.MaxPool2d(3, 1, padding=1, return_indices=True))
                    dilation = 2
                else:
                    layers.append(nn.MaxPool2d(2, 2, return_indices=True))
                continue
            layers.append(nn.Conv2d(channels, item, 3, padding=dilation, dilation=dilation))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            channels = item
        self.features = nn.Sequential(*layers)
        self.out_channels = [64, 128, 256, 512, 512]
        self.reductions = [2, 4, 8, 16, 32] if output_stride == 32 else [2, 4, 8, 8, 8]
        if weights == "imagenet":
            import torchvision

            name = "vgg16_bn" if batch_norm else "vgg16"
            state = torchvision.models.get_model(name, weights="DEFAULT").state_dict()
            self.load_torchvision_state(state)
        elif weights is not None:
            self.load_torchvision_state(load_state_file(weights))

    def load_torchvision_state(self, state: dict[str, Tensor]) -> None:
        """Load the ``features.*`` entries of a torchvision VGG16 state dict."""
        ours = self.state_dict()
        feats = {k: v for k, v in state.items() if k.startswith("features.")}
        if set(feats) != set(ours):
            missing = sorted(set(ours) - set(feats))[:4]
            raise ConfigError(f"weights do not fit VGG16 features (missing e.g. {missing}); "
                              f"is it a torchvision vgg16{'_bn' if len(ours) > 26 else ''} file?")
        first = "features.0.weight"
        feats[first] = adapt_input_conv(feats[first], ours[first].shape[1])
        self.load_state_dict(feats)

    def forward_with_indices(self, x: Tensor) -> tuple[list[Tensor], list[Tensor], list[torch.Size]]:
        """Pool outputs, pool argmax indices, and the input size of each pool (2×2 pools only;
        the stride-1 pools of ``output_stride=8`` return indices too, but unpooling them is not meaningful)."""
        feats, indices, sizes = [], [], []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                sizes.append(x.shape)
                x, idx = layer(x)
                feats.append(x)
                indices.append(idx)
            else:
                x = layer(x)
        return feats, indices, sizes

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.forward_with_indices(x)[0]


@register(ENCODERS, "vgg16")
def vgg16(*, in_channels: int = 3, weights: str | None = None, output_stride: int = 32) -> VGG16Encoder:
    """VGG16 without batch norm (the FCN / SegNet / DeepLab v1 backbone)."""
    return VGG16Encoder(in_channels=in_channels, weights=weights, output_stride=output_stride)


@register(ENCODERS, "vgg16_bn")
def vgg16_bn(*, in_channels: int = 3, weights: str | None = None, output_stride: int = 32) -> VGG16Encoder:
    """VGG16 with batch norm after every convolution."""
    return VGG16Encoder(in_channels=in_channels, batch_norm=True, weights=weights, output_stride=output_stride)
