"""torchvision segmentation checkpoints -> pixelwise: ``fcn_resnet50/101``, ``deeplabv3_resnet50/101``,
``deeplabv3_mobilenet_v3_large`` and ``lraspp_mobilenet_v3_large``.

The architecture is read from the state dict itself (``classifier.0.convs`` is DeepLabV3's
ASPP, ``classifier.cbr`` LR-ASPP's, otherwise FCN's head; ``backbone.layer1`` a ResNet,
``backbone.0`` a MobileNetV3). The converted models run odd sizes unpadded
(``pad_multiple=1``), as torchvision does, so their logits are torchvision's.
"""

from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError
from .keymap import rename

_RESNET = [
    (r"backbone\.conv1\.(\w+)", r"encoder.stages.0.0.\1"),
    (r"backbone\.bn1\.(\w+)", r"encoder.stages.0.1.\1"),
    (r"backbone\.layer1\.(.+)", r"encoder.stages.1.1.\1"),
    (r"backbone\.layer([234])\.(.+)", r"encoder.stages.\1.\2"),
]
_MOBILENET = [(r"backbone\.(\d+)\.(.+)", r"encoder.features.\1.\2")]
_AUX = [
    (r"aux_classifier\.0\.(\w+)", r"aux_head.block.0.0.\1"),
    (r"aux_classifier\.1\.(\w+)", r"aux_head.block.0.1.\1"),
    (r"aux_classifier\.4\.(\w+)", r"aux_head.block.2.\1"),
]
_FCN = [
    (r"classifier\.0\.(\w+)", r"decoder.block.0.0.\1"),
    (r"classifier\.1\.(\w+)", r"decoder.block.0.1.\1"),
    (r"classifier\.4\.(\w+)", r"head.\1"),
]
_DEEPLAB = [
    (r"classifier\.0\.convs\.([0-3])\.([01])\.(\w+)", r"decoder.0.branches.\1.\2.\3"),
    (r"classifier\.0\.convs\.4\.1\.(\w+)", r"decoder.0.branches.4.1.0.\1"),
    (r"classifier\.0\.convs\.4\.2\.(\w+)", r"decoder.0.branches.4.1.1.\1"),
    (r"classifier\.0\.project\.0\.(\w+)", r"decoder.0.project.0.0.\1"),
    (r"classifier\.0\.project\.1\.(\w+)", r"decoder.0.project.0.1.\1"),
    (r"classifier\.1\.(\w+)", r"decoder.1.0.\1"),
    (r"classifier\.2\.(\w+)", r"decoder.1.1.\1"),
    (r"classifier\.4\.(\w+)", r"head.\1"),
]
_LRASPP = [
    (r"classifier\.cbr\.([01])\.(\w+)", r"decoder.reduce.\1.\2"),
    (r"classifier\.scale\.1\.(\w+)", r"decoder.gate.1.\1"),
    (r"classifier\.low_classifier\.(\w+)", r"decoder.classify_low.\1"),
    (r"classifier\.high_classifier\.(\w+)", r"decoder.classify_high.\1"),
]


def _resnet_name(state: dict[str, Tensor]) -> str:
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("backbone.layer3.")}
    depth = {6: "resnet50", 23: "resnet101", 36: "resnet152"}.get(len(blocks))
    if depth is None:
        raise ConfigError(f"torchvision ResNet backbone with {len(blocks)} blocks in layer3 is not one of "
                          f"resnet50/101/152 (6/23/36)")
    return depth


def architecture(state: dict[str, Tensor]) -> str:
    """``fcn``, ``deeplabv3`` or ``lraspp`` from the keys of a torchvision segmentation state dict."""
    if any(k.startswith("classifier.cbr.") for k in state):
        return "lraspp"
    if any(k.startswith("classifier.0.convs.") for k in state):
        return "deeplabv3"
    if "classifier.0.weight" in state and "classifier.4.weight" in state:
        return "fcn"
    raise ConfigError("not a torchvision segmentation state dict (no classifier.* of FCN, DeepLabV3 or LR-ASPP); "
                      "is it from torchvision.models.segmentation?")


def convert(state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """A torchvision segmentation state dict -> ``(model name, create_model kwargs, pixelwise state dict)``."""
    arch = architecture(state)
    resnet = any(k.startswith("backbone.layer1.") for k in state)
    aux = any(k.startswith("aux_classifier.") for k in state)
    in_channels = int(next(v for k, v in state.items() if k in ("backbone.conv1.weight", "backbone.0.0.weight"))
                      .shape[1])
    if arch == "lraspp":
        num_classes = int(state["classifier.low_classifier.weight"].shape[0])
        kwargs = {"num_classes": num_classes, "in_channels": in_channels, "pad_multiple": 1,
                  "inter_channels": int(state["classifier.cbr.0.weight"].shape[0])}
        return "lraspp", kwargs, rename(state, _MOBILENET + _LRASPP, source="torchvision lraspp")
    num_classes = int(state["classifier.4.weight"].shape[0])
    encoder = "tv:" + _resnet_name(state) if resnet else "tv_mobilenet_v3_large_dilated"
    kwargs = {"num_classes": num_classes, "in_channels": in_channels, "encoder": encoder, "aux": aux,
              "output_stride": 8 if resnet else 16, "pad_multiple": 1}
    if arch == "deeplabv3":
        kwargs["rates"] = [12, 24, 36]  # torchvision's DeepLabHead uses these at both output strides
    backbone = _RESNET if resnet else _MOBILENET
    head = _DEEPLAB if arch == "deeplabv3" else _FCN
    name = "deeplabv3" if arch == "deeplabv3" else "fcn_dilated"
    return name, kwargs, rename(state, backbone + head + _AUX, source=f"torchvision {arch}")
