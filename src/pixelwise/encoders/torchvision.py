"""torchvision classification backbones as encoders, loading torchvision-format weight files."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import adapt_input_conv, check_load, load_state_file

RESNETS = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
           "resnext101_32x8d", "wide_resnet50_2", "wide_resnet101_2"]
FEATURE_NETS = ["mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small", "mnasnet1_0",
                "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3",
                "efficientnet_b4", "efficientnet_v2_s", "convnext_tiny", "convnext_small",
                "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"]
SUPPORTED = RESNETS + FEATURE_NETS


def _replace_first_conv(module: nn.Module, in_channels: int) -> None:
    """Swap the first Conv2d of ``module`` for one taking ``in_channels`` (weights adapted)."""
    for parent in module.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_channels:
                    return
                new = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride,
                                child.padding, child.dilation, child.groups, child.bias is not None)
                with torch.no_grad():
                    new.weight.copy_(adapt_input_conv(child.weight, in_channels))
                    if child.bias is not None:
                        new.bias.copy_(child.bias)
                setattr(parent, child_name, new)
                return


def _split_by_resolution(features: nn.Sequential, in_channels: int) -> list[nn.Sequential]:
    """Cut a ``features`` Sequential into stages ending at the last layer of each resolution."""
    x = torch.zeros(1, in_channels, 64, 64)
    sizes = []
    was_training = features.training
    features.eval()
    with torch.no_grad():
        for layer in features:
            x = layer(x)
            sizes.append(x.shape[-1])
    features.train(was_training)
    layers = list(features)
    stages, start = [], 0
    for i, size in enumerate(sizes):
        if i == len(sizes) - 1 or sizes[i + 1] != size:
            stages.append(nn.Sequential(*layers[start:i + 1]))
            start = i + 1
    return stages


class TorchvisionEncoder(nn.Module):
    """A torchvision backbone cut into stages at each stride.

    Args:
        name: a name in ``SUPPORTED`` (ResNet/ResNeXt/Wide-ResNet, MobileNet v2/v3, MnasNet,
            EfficientNet, ConvNeXt, VGG).
        in_channels: input channels; a pretrained first convolution is adapted.
        weights: ``None``, ``"imagenet"`` (torchvision download; needs a network) or a local
            file in torchvision's state-dict format, e.g. ``mobilenet_v2-b0353104.pth``.
        output_stride: 8 or 16 dilate the last ResNet stages (Bottleneck ResNets only).

    ``forward``: ``(N, in_channels, H, W)`` -> features at reductions ``[2, 4, 8, 16, 32]``.
    """

    def __init__(self, name: str, *, in_channels: int = 3, weights: str | None = None,
                 output_stride: int = 32) -> None:
        super().__init__()
        import torchvision

        if name not in SUPPORTED:
            raise ConfigError(f"unknown torchvision encoder {name!r}; supported: {', '.join(SUPPORTED)}")
        if output_stride not in (8, 16, 32):
            raise ConfigError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        kwargs: dict = {}
        if output_stride != 32:
            if name not in RESNETS or name in ("resnet18", "resnet34"):
                raise ConfigError(f"torchvision {name} cannot be dilated to output_stride {output_stride}; "
                                  f"use the timm encoder of the same name (e.g. encoder: {name.split('_')[0]})")
            kwargs["replace_stride_with_dilation"] = [False, output_stride == 8, True]
        net = torchvision.models.get_model(name, weights="DEFAULT" if weights == "imagenet" else None, **kwargs)
        if weights not in (None, "imagenet"):
            check_load(net, load_state_file(weights), f"{weights!r}")
        _replace_first_conv(net, in_channels)
        if name in RESNETS:
            stages = [nn.Sequential(net.conv1, net.bn1, net.relu), nn.Sequential(net.maxpool, net.layer1),
                      net.layer2, net.layer3, net.layer4]
        else:
            stages = _split_by_resolution(net.features, in_channels)
        self.stages = nn.ModuleList(stages)
        self.out_channels, self.reductions = self._probe(in_channels)

    def _probe(self, in_channels: int) -> tuple[list[int], list[int]]:
        was_training = self.training
        self.eval()
        with torch.no_grad():
            feats = self.forward(torch.zeros(1, in_channels, 64, 64))
        self.train(was_training)
        return [f.shape[1] for f in feats], [64 // f.shape[-1] for f in feats]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats
