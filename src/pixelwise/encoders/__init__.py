"""Encoders: timm models, torchvision backbones and VGG16 (with max-pool indices).

``build_encoder(name, ...)`` resolves a name in this order: a pixelwise encoder registered
under that name (``vgg16``, ``vgg16_bn``), ``tv:NAME`` for a torchvision backbone,
``timm:NAME`` or any other name for a timm model.
"""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..registry import ENCODERS
from . import mit as _mit  # noqa: F401 - registers mit_b0..mit_b5
from . import timm as _timm
from . import torchvision as _tv
from . import vgg as _vgg  # noqa: F401 - registers vgg16/vgg16_bn
from . import vit as _vit
from .base import Encoder, adapt_input_conv, load_state_file

__all__ = ["Encoder", "build_encoder", "list_encoders", "load_state_file", "adapt_input_conv"]


def build_encoder(
    name: str,
    *,
    in_channels: int = 3,
    weights: str | None = None,
    output_stride: int = 32,
    timm_kwargs: dict | None = None,
    dilation: str = "timm",
) -> nn.Module:
    """Build an encoder by name.

    ``weights`` is ``None`` (random init), ``"imagenet"`` (downloads; only when asked) or a
    path to a local weight file in the backbone's own format (timm or torchvision).
    ``output_stride`` 8 or 16 replaces the last strides by dilation (DeepLab style).
    A plain ViT-style timm model (ViT, DeiT, DINOv2, EVA) becomes a four-level encoder by
    DPT reassembly (``encoders/vit.py``); Swin works at any input size. ``timm_kwargs`` go to
    ``timm.create_model`` (small test networks: ``embed_dim``, ``depth``...). ``dilation="smp"``
    dilates timm encoders the way smp's ``make_dilated`` does (converted smp DeepLab models).
    """
    if name in ENCODERS:
        return ENCODERS[name](in_channels=in_channels, weights=weights, output_stride=output_stride)
    for prefix in ("tv:", "torchvision:"):
        if name.startswith(prefix):
            return _tv.TorchvisionEncoder(name[len(prefix):], in_channels=in_channels, weights=weights,
                                          output_stride=output_stride)
    if name.startswith("timm:"):
        name = name[len("timm:"):]
    if _vit.is_vit(name):
        if output_stride != 32:
            raise ConfigError(f"{name!r} is a plain ViT (one stride, reassembled to 4-32); it cannot be dilated to "
                              f"output_stride={output_stride}; use output_stride=32 or a CNN encoder")
        return _vit.ViTEncoder(name, in_channels=in_channels, weights=weights, timm_kwargs=timm_kwargs)
    return _timm.TimmEncoder(name, in_channels=in_channels, weights=weights, output_stride=output_stride,
                             timm_kwargs=timm_kwargs, dilation=dilation)


def list_encoders() -> dict[str, list[str]]:
    """Encoder names by source (timm lists every model it knows)."""
    return {
        "pixelwise": sorted(ENCODERS),
        "torchvision": ["tv:" + n for n in _tv.SUPPORTED],
        "timm": _timm.list_names(),
    }
