"""Drop-in constructors for segmentation_models.pytorch (smp) users.

``import pixelwise as smp`` keeps a script's model lines working::

    model = smp.Unet(encoder_name="resnet34", encoder_weights=None, in_channels=1, classes=3)
    loss = smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE)

Each constructor is a thin alias over :func:`pixelwise.create_model` that maps smp's
keyword names (``encoder_name``, ``classes``, ``activation``, ...) onto pixelwise's and
returns an :class:`SmpStyleModel`: the pixelwise network plus smp's optional output
activation, ``predict()`` and attribute names (``encoder``, ``decoder``,
``segmentation_head``). It saves with :func:`pixelwise.save` like any pixelwise model.

Differences a user should know (also in docs/smp-migration.md):

- ``encoder_weights`` defaults to ``None``: pixelwise downloads nothing unless asked.
  ``"imagenet"`` asks timm/torchvision to download; a file path loads local weights.
- Encoder names are timm's (``resnet34``, ``efficientnet_b0``); smp's spellings
  ``efficientnet-b0``, ``timm-efficientnet-b0`` and ``tu-NAME`` are translated.
- ``PSPNet`` is the paper's (dilated encoder, output stride 8, bins 1/2/3/6), not smp's
  shallow variant; ``DeepLabV3``'s auxiliary head is off so the output is one tensor.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .models import create_model

__all__ = ["SmpStyleModel", "Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus",
           "smp_encoder_name"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "identity": nn.Identity,
    "sigmoid": nn.Sigmoid,
    "softmax": lambda: nn.Softmax(dim=1),
    "softmax2d": lambda: nn.Softmax(dim=1),
    "logsoftmax": lambda: nn.LogSoftmax(dim=1),
    "tanh": nn.Tanh,
}


def smp_encoder_name(name: str) -> str:
    """Translate an smp encoder name to the name pixelwise/timm uses.

    ``tu-regnety_004`` -> ``regnety_004``; ``efficientnet-b3`` -> ``efficientnet_b3``;
    ``timm-efficientnet-b3`` -> ``tf_efficientnet_b3`` (smp's "timm-" EfficientNets are
    the TensorFlow-ported weights); anything else unchanged.
    """
    if name.startswith("tu-"):
        return name[3:]
    match = re.fullmatch(r"(timm-)?efficientnet-(b\d|l2)", name)
    if match:
        return ("tf_" if match.group(1) else "") + f"efficientnet_{match.group(2)}"
    return name


def _activation(activation: str | Callable | None) -> nn.Module:
    if activation is None:
        return nn.Identity()
    if callable(activation):
        return activation()
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"activation {activation!r} is unknown; use None, a callable or one of "
                          f"{', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[activation]()


class SmpStyleModel(nn.Module):
    """A pixelwise network with smp's interface.

    ``forward(x)``: ``(N, C_in, H, W)`` -> ``activation(logits)`` ``(N, classes, H, W)``.
    The state dict and ``config`` are the inner network's, so ``pixelwise.save`` writes a
    normal pixelwise model folder (the activation is not part of it: it has no weights).
    """

    def __init__(self, net: nn.Module, activation: str | Callable | None = None) -> None:
        super().__init__()
        self.net = net
        self.activation = _activation(activation)
        self.config = net.config

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    @property
    def decoder(self) -> nn.Module:
        return self.net.decoder

    @property
    def segmentation_head(self) -> nn.Module:
        return self.net.head

    def forward(self, x: Tensor) -> Tensor:
        return self.activation(self.net(x))

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Eval mode + no grad + forward, as smp's ``predict``."""
        if self.training:
            self.eval()
        return self(x)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        return self.net.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        return self.net.load_state_dict(state_dict, strict=strict, assign=assign)


def _build(name: str, encoder_name: str, encoder_weights: str | None, in_channels: int, classes: int,
           activation: str | Callable | None, **extra: Any) -> SmpStyleModel:
    net = create_model(name, encoder=smp_encoder_name(encoder_name), encoder_weights=encoder_weights,
                       in_channels=in_channels, num_classes=classes, **extra)
    return SmpStyleModel(net, activation)


def Unet(encoder_name: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 3,
         classes: int = 1, activation: str | Callable | None = None,
         decoder_channels: list[int] | tuple[int, ...] | None = None) -> SmpStyleModel:
    """U-Net with an encoder (smp ``Unet``); pixelwise ``unet``.

    ``decoder_channels`` defaults to (256, 128, 64, 32, 16) for five-stage encoders, as smp's.
    """
    extra = {} if decoder_channels is None else {"decoder_channels": list(decoder_channels)}
    return _build("unet", encoder_name, encoder_weights, in_channels, classes, activation, **extra)


def UnetPlusPlus(encoder_name: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 3,
                 classes: int = 1, activation: str | Callable | None = None) -> SmpStyleModel:
    """U-Net++ with an encoder (smp ``UnetPlusPlus``); pixelwise ``unetplusplus``."""
    return _build("unetplusplus", encoder_name, encoder_weights, in_channels, classes, activation)


def FPN(encoder_name: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 3,
        classes: int = 1, activation: str | Callable | None = None, decoder_pyramid_channels: int = 256,
        decoder_segmentation_channels: int = 128) -> SmpStyleModel:
    """Panoptic-FPN semantic head (smp ``FPN``); pixelwise ``fpn``."""
    return _build("fpn", encoder_name, encoder_weights, in_channels, classes, activation,
                  fpn_channels=decoder_pyramid_channels, head_channels=decoder_segmentation_channels)


def PSPNet(encoder_name: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 3,
           classes: int = 1, activation: str | Callable | None = None) -> SmpStyleModel:
    """PSPNet as in the paper (smp ``PSPNet`` name); pixelwise ``pspnet`` without the aux head."""
    return _build("pspnet", encoder_name, encoder_weights, in_channels, classes, activation, aux=False)


def DeepLabV3(encoder_name: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 3,
              classes: int = 1, activation: str | Callable | None = None,
              encoder_output_stride: int = 8) -> SmpStyleModel:
    """DeepLab v3 (smp ``DeepLabV3``); pixelwise ``deeplabv3`` without the aux head."""
    return _build("deeplabv3", encoder_name, encoder_weights, in_channels, classes, activation,
                  output_stride=encoder_output_stride, aux=False)


def DeepLabV3Plus(encoder_name: str = "resnet34", encoder_weights: str | None = None, in_channels: int = 3,
                  classes: int = 1, activation: str | Callable | None = None,
                  encoder_output_stride: int = 16) -> SmpStyleModel:
    """DeepLab v3+ (smp ``DeepLabV3Plus``); pixelwise ``deeplabv3plus``."""
    return _build("deeplabv3plus", encoder_name, encoder_weights, in_channels, classes, activation,
                  output_stride=encoder_output_stride)
