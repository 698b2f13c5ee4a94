"""The models the latency and training benchmarks compare, each with its peer.

Every entry is one architecture/encoder pair built twice with random weights (nothing is
downloaded): by ``pixelwise.create_model`` and by the peer library that users would
otherwise reach for (segmentation_models_pytorch, or ``torchvision.models.segmentation``
with ``weights=None, weights_backbone=None``). Auxiliary heads are off on both sides, so a
training step does the same work (torchvision's and smp's constructors leave them off too).

Where the two libraries do not build the same network under the same name, ``note`` says
how they differ; the benchmarks then also report FLOPs per side, so the reader can tell a
faster implementation from a smaller network.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class Entry:
    """One row of the zoo: pixelwise ``create_model`` keywords and the peer's constructor."""

    title: str
    pixelwise: dict
    peer: str  # "smp" or "torchvision"
    peer_call: str  # the peer's constructor, as text for the reports
    note: str = ""
    peer_kwargs: dict = field(default_factory=dict)


ZOO: dict[str, Entry] = {
    "unet_resnet34": Entry("U-Net-ResNet34", {"name": "unet", "encoder": "resnet34"}, "smp",
                           'smp.Unet("resnet34")'),
    "deeplabv3plus_resnet50": Entry(
        "DeepLabV3+-ResNet50", {"name": "deeplabv3plus", "encoder": "resnet50"}, "smp",
        'smp.DeepLabV3Plus("resnet50")',
        "both output stride 16 with separable ASPP/decoder convolutions; ASPP rates 6/12/18 (paper) vs "
        "smp's 12/24/36 (same FLOPs)"),
    "fpn_resnet34": Entry(
        "FPN-ResNet34", {"name": "fpn", "encoder": "resnet34"}, "smp", 'smp.FPN("resnet34")',
        "pixelwise keeps the FPN paper's 3x3 smoothing convolution on P2-P5 (+2.4 M parameters), smp has none"),
    "pspnet_resnet34": Entry(
        "PSPNet-ResNet34", {"name": "pspnet", "encoder": "resnet34", "aux": False}, "smp", 'smp.PSPNet("resnet34")',
        "different networks under one name: pixelwise is the paper's (all four ResNet stages, dilated to "
        "output stride 8, 3x3 bottleneck), smp's default stops after stage 2 (encoder_depth=3) with a 1x1 "
        "bottleneck, several times fewer FLOPs; compare GFLOP/s, not milliseconds"),
    "segformer_b0": Entry(
        "SegFormer-B0", {"name": "segformer", "encoder": "mit_b0"}, "smp", 'smp.Segformer("mit_b0")',
        "the same MiT-B0 encoder and all-MLP decoder (256 channels); smp's final 4x upsampling aligns corners"),
    "upernet_convnext_tiny": Entry(
        "UPerNet-ConvNeXt-T", {"name": "upernet", "encoder": "convnext_tiny", "aux": False}, "smp",
        'smp.UPerNet("tu-convnext_tiny")', "pixelwise's default head has 512 channels (the ConvNeXt/Swin "
        "ADE20K setup), smp's 256: different FLOPs, compare GFLOP/s", peer_kwargs={"encoder": "tu-convnext_tiny"}),
    "fcn_resnet50": Entry(
        "FCN-ResNet50", {"name": "fcn_dilated", "encoder": "tv:resnet50", "aux": False}, "torchvision",
        "torchvision.models.segmentation.fcn_resnet50()", peer_kwargs={"builder": "fcn_resnet50"}),
    "deeplabv3_resnet50": Entry(
        "DeepLabV3-ResNet50", {"name": "deeplabv3", "encoder": "tv:resnet50", "aux": False}, "torchvision",
        "torchvision.models.segmentation.deeplabv3_resnet50()", peer_kwargs={"builder": "deeplabv3_resnet50"}),
    "lraspp_mobilenetv3": Entry(
        "LR-ASPP-MobileNetV3-Large", {"name": "lraspp"}, "torchvision",
        "torchvision.models.segmentation.lraspp_mobilenet_v3_large()",
        peer_kwargs={"builder": "lraspp_mobilenet_v3_large"}),
}


class OutOnly(nn.Module):
    """torchvision's segmentation models return ``{"out": logits}``; this returns the logits,
    so every contender is ``(N, 3, H, W) -> (N, C, H, W)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build_pixelwise(key: str, num_classes: int) -> nn.Module:
    from pixelwise import create_model

    kwargs = dict(ZOO[key].pixelwise)
    return create_model(kwargs.pop("name"), num_classes=num_classes, encoder_weights=None, **kwargs)


def build_peer(key: str, num_classes: int) -> nn.Module:
    """The peer's model with random weights; import errors name the missing package."""
    entry = ZOO[key]
    if entry.peer == "smp":
        try:
            import segmentation_models_pytorch as smp
        except ImportError as err:
            raise SystemExit("segmentation_models_pytorch is not installed; `make bench` builds .venv-bench with "
                             "the peers, or pip install segmentation-models-pytorch") from err
        cls = getattr(smp, entry.peer_call.split("(")[0].split(".")[1])
        encoder = entry.peer_kwargs.get("encoder", entry.pixelwise["encoder"])
        return cls(encoder, encoder_weights=None, classes=num_classes)
    import torchvision

    builder = getattr(torchvision.models.segmentation, entry.peer_kwargs["builder"])
    return OutOnly(builder(weights=None, weights_backbone=None, num_classes=num_classes))


def peer_version(key: str) -> str:
    if ZOO[key].peer == "smp":
        import segmentation_models_pytorch as smp

        return f"smp {smp.__version__}"
    import torchvision

    return f"torchvision {torchvision.__version__}"


def zero_class_bias(model: nn.Module, num_classes: int) -> None:
    """Zero the bias of the classifier convolutions (``num_classes`` outputs).

    With random weights the classifier's bias alone picks one class for every pixel, which
    would make argmax agreement trivially 100 %; without it the argmax varies over the image
    with small margins, a strict test for reduced precision.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.out_channels == num_classes and module.bias is not None:
                module.bias.zero_()


def parse_models(text: str | None) -> list[str]:
    """``--models`` (comma-separated keys, or "all") -> keys, failing with the valid names."""
    if not text or text == "all":
        return list(ZOO)
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in ZOO]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(ZOO)} (or 'all')")
    return keys
