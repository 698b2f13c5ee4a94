"""Encoders: timm models, torchvision backbones and VGG16 (with max-pool indices).

``build_encoder(name, ...)`` resolves a name in this order: a pixelwise encoder registered
under that name (``vgg16``, ``vgg16_bn``), ``tv:NAME`` for a torchvision backbone,
``timm:NAME`` or any other name for a timm model.
"""

from __future__ import annotations

from torch import nn

from ..registry import ENCODERS
from . import timm as _timm
from . import torchvision as _tv
from . import vgg as _vgg  # noqa: F401 - registers vgg16/vgg16_bn
from .base import Encoder, adapt_input_conv, load_state_file

__all__ = ["Encoder", "build_encoder", "list_encoders", "load_state_file", "adapt_input_conv"]


def build_encoder(
    name: str,
    *,
    in_channels: int = 3,
    weights: str | None = None,
    output_stride: int = 32,
) -> nn.Module:
    """Build an encoder by name.

    ``weights`` is ``None`` (random init), ``"imagenet"`` (downloads; only when asked) or a
    path to a local weight file in the backbone's own format (timm or torchvision).
    ``output_stride`` 8 or 16 replaces the last strides by dilation (DeepLab style).
    """
    if name in ENCODERS:
        return ENCODERS[name](in_channels=in_channels, weights=weights, output_stride=output_stride)
    for prefix in ("tv:", "torchvision:"):
        if name.startswith(prefix):
            return _tv.TorchvisionEncoder(name[len(prefix):], in_channels=in_channels, weights=weights,
                                          output_stride=output_stride)
    if name.startswith("timm:"):
        name = name[len("timm:"):]
    return _timm.TimmEncoder(name, in_channels=in_channels, weights=weights, output_stride=output_stride)


def list_encoders() -> dict[str, list[str]]:
    """Encoder names by source (timm lists every model it knows)."""
    return {
        "pixelwise": sorted(ENCODERS),
        "torchvision": ["tv:" + n for n in _tv.SUPPORTED],
        "timm": _timm.list_names(),
    }
