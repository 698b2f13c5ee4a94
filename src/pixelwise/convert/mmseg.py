"""MMSegmentation checkpoint state dicts -> pixelwise: SegFormer (MiT + SegformerHead),
PSPNet (ResNetV1c-D8 + PSPHead + FCNHead auxiliary) and DeepLabV3+ (ResNetV1c-D8 +
DepthwiseSeparableASPPHead + FCNHead auxiliary).

The key maps follow MMSegmentation 1.x's published module layout (``mmseg/models/backbones/
mit.py``, ``resnet.py``; ``decode_heads/segformer_head.py``, ``psp_head.py``, ``fcn_head.py``,
``aspp_head.py``, ``sep_aspp_head.py``; mmcv's ``ConvModule`` = ``conv``/``bn`` and
``DepthwiseSeparableConvModule`` = ``depthwise_conv``/``pointwise_conv``, each a ConvModule with
norm and ReLU); mmseg is not imported. A checkpoint has no architecture config, so the architecture is read
from the keys and tensor shapes (widths, depths, reduction ratios, classes); MiT's attention
heads are not in the weights and are the paper's 1/2/5/8 (``heads=`` overrides).

Layout facts used: MiT stage ``i`` is ``backbone.layers.i`` = [patch embedding, blocks,
LayerNorm]; attention is ``nn.MultiheadAttention`` (q/k/v packed in ``in_proj_weight``); the
Mix-FFN is ``ffn.layers`` = [1×1 conv, 3×3 depthwise conv, GELU, dropout, 1×1 conv, dropout];
every LayerNorm has eps 1e-6; ``SegformerHead`` projects each level with a ConvModule
(conv + BN + ReLU) and concatenates shallow to deep. ResNetV1c has a three-convolution stem
(``backbone.stem.0..8``) and MMSeg's contract dilation (the first block of a dilated stage keeps
half the dilation), which is timm's ``resnet50c`` / ``resnet101c`` at output stride 8.
``DepthwiseSeparableASPPHead`` concatenates [image pool, 1×1, dilated 12/24/36] (pixelwise puts
the pool last), projects with a 3×3 ConvModule ("bottleneck"), reduces the stride-4 feature
(``c1_bottleneck``, 48) and fuses with two separable modules (``sep_bottleneck``); output stride
and ASPP rates are not in the weights: the published d8 configs' 8 and 12/24/36 are assumed.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..errors import ConfigError
from .keymap import rename


def architecture(state: dict[str, Tensor]) -> str:
    """``segformer``, ``pspnet`` or ``deeplabv3plus`` from the keys of an MMSegmentation state dict."""
    if "decode_head.fusion_conv.conv.weight" in state:
        return "segformer"
    if any(k.startswith("decode_head.psp_modules.") for k in state):
        return "pspnet"
    if any(k.startswith("decode_head.sep_bottleneck.") for k in state):
        return "deeplabv3plus"
    raise ConfigError("not an MMSegmentation SegFormer, PSPNet or DeepLabV3+ state dict (no decode_head.fusion_conv / "
                      "psp_modules / sep_bottleneck); Mask2Former is not converted yet")


def segformer(state: dict[str, Tensor], *, heads: list[int] | None = None) -> tuple[str, dict, dict[str, Tensor]]:
    """MMSegmentation ``EncoderDecoder(MixVisionTransformer, SegformerHead)`` -> pixelwise ``segformer``."""
    dims, depths, ratios = [], [], []
    for i in range(4):
        dims.append(int(state[f"backbone.layers.{i}.0.projection.weight"].shape[0]))
        depths.append(len({int(k.split(".")[4]) for k in state if k.startswith(f"backbone.layers.{i}.1.")}))
        sr = state.get(f"backbone.layers.{i}.1.0.attn.sr.weight")
        ratios.append(int(sr.shape[-1]) if sr is not None else 1)
    mlp = int(state["backbone.layers.0.1.0.ffn.layers.0.weight"].shape[0]) // dims[0]
    channels = int(state["decode_head.convs.0.conv.weight"].shape[0])
    kwargs = {"num_classes": int(state["decode_head.conv_seg.weight"].shape[0]),
              "in_channels": int(state["backbone.layers.0.0.projection.weight"].shape[1]), "encoder": "mit_b0",
              "decoder_channels": channels, "layer_norm_eps": 1e-6, "proj_norm": True,
              "encoder_config": {"dims": dims, "depths": depths, "heads": list(heads or [1, 2, 5, 8]),
                                 "ratios": ratios, "mlp_ratio": mlp}}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"backbone\.layers\.(\d)\.1\.(\d+)\.attn\.attn\.in_proj_(weight|bias)", key)
        if m:  # packed q, k, v
            q, k, v = value.chunk(3, dim=0)
            prefix = f"encoder.stages.{m[1]}.blocks.{m[2]}.attn"
            out[f"{prefix}.q.{m[3]}"], out[f"{prefix}.k.{m[3]}"], out[f"{prefix}.v.{m[3]}"] = q, k, v
            continue
        m = re.fullmatch(r"backbone\.layers\.(\d)\.1\.(\d+)\.ffn\.layers\.([014])\.(\w+)", key)
        if m:
            name = {"0": "fc1", "1": "dwconv", "4": "fc2"}[m[3]]
            if name != "dwconv" and m[4] == "weight":
                value = value[:, :, 0, 0]  # 1×1 convolution -> Linear
            out[f"encoder.stages.{m[1]}.blocks.{m[2]}.ffn.{name}.{m[4]}"] = value
            continue
        out[key] = value
    # pixelwise concatenates deep to shallow (the paper's code and transformers); MMSeg shallow to deep.
    fuse = out["decode_head.fusion_conv.conv.weight"]
    out["decode_head.fusion_conv.conv.weight"] = torch.cat(fuse.chunk(4, dim=1)[::-1], dim=1)
    rules = [
        (r"(encoder\..+)", r"\1"),
        (r"backbone\.layers\.(\d)\.0\.projection\.(\w+)", r"encoder.stages.\1.embed.proj.\2"),
        (r"backbone\.layers\.(\d)\.0\.norm\.(\w+)", r"encoder.stages.\1.embed.norm.\2"),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.norm([12])\.(\w+)", r"encoder.stages.\1.blocks.\2.norm\3.\4"),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.attn\.attn\.out_proj\.(\w+)", r"encoder.stages.\1.blocks.\2.attn.proj.\3"),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.attn\.sr\.(\w+)", r"encoder.stages.\1.blocks.\2.attn.sr.\3"),
        (r"backbone\.layers\.(\d)\.1\.(\d+)\.attn\.norm\.(\w+)", r"encoder.stages.\1.blocks.\2.attn.sr_norm.\3"),
        (r"backbone\.layers\.(\d)\.2\.(\w+)", r"encoder.stages.\1.norm.\2"),
        (r"decode_head\.convs\.(\d)\.conv\.(\w+)", r"decoder.proj.\1.0.\2"),
        (r"decode_head\.convs\.(\d)\.bn\.(\w+)", r"decoder.proj.\1.1.\2"),
        (r"decode_head\.fusion_conv\.conv\.(\w+)", r"decoder.fuse.0.\1"),
        (r"decode_head\.fusion_conv\.bn\.(\w+)", r"decoder.fuse.1.\1"),
        (r"decode_head\.conv_seg\.(\w+)", r"head.1.\1"),
    ]
    return "segformer", kwargs, rename(out, rules, source="MMSegmentation SegFormer")


_STEM = {"0": "conv1.0", "1": "conv1.1", "3": "conv1.3", "4": "conv1.4", "6": "conv1.6", "7": "bn1"}


def _resnet_v1c(state: dict[str, Tensor]) -> tuple[str, list]:
    """timm's name for the ResNetV1c in ``state`` and the rules renaming its keys."""
    if "backbone.stem.0.weight" not in state:
        raise ConfigError("only ResNetV1c backbones (backbone.stem.*, MMSegmentation's default) are converted")
    blocks = len({int(k.split(".")[2]) for k in state if k.startswith("backbone.layer3.")})
    encoder = {6: "resnet50c", 23: "resnet101c"}.get(blocks)
    if encoder is None:
        raise ConfigError(f"ResNetV1c with {blocks} blocks in layer3 is not ResNet-50/101 (6/23)")
    return encoder, [(r"backbone\.stem\.([013467])\.(\w+)", lambda m: f"encoder.model.{_STEM[m[1]]}.{m[2]}"),
                     (r"backbone\.(layer\d\..+)", r"encoder.model.\1")]


_AUX = [
    (r"auxiliary_head\.convs\.0\.conv\.(\w+)", r"aux_head.block.0.0.\1"),
    (r"auxiliary_head\.convs\.0\.bn\.(\w+)", r"aux_head.block.0.1.\1"),
    (r"auxiliary_head\.conv_seg\.(\w+)", r"aux_head.block.2.\1"),
]


def pspnet(state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """MMSegmentation ``EncoderDecoder(ResNetV1c-D8, PSPHead, FCNHead)`` -> pixelwise ``pspnet``."""
    encoder, backbone = _resnet_v1c(state)
    bins = sorted(int(k.split(".")[2]) for k in state if re.fullmatch(r"decode_head\.psp_modules\.\d+\.1\.conv\.weight",
                                                                        k))
    kwargs = {"num_classes": int(state["decode_head.conv_seg.weight"].shape[0]),
              "in_channels": int(state["backbone.stem.0.weight"].shape[1]), "encoder": encoder, "output_stride": 8,
              "bins": [1, 2, 3, 6][: len(bins)], "aux": "auxiliary_head.conv_seg.weight" in state}
    if len(bins) != 4 or int(state["decode_head.bottleneck.conv.weight"].shape[0]) != 512:
        raise ConfigError("only the default PSPHead (pool scales 1/2/3/6, 512 channels) is converted")
    rules = backbone + [
        (r"decode_head\.psp_modules\.(\d)\.1\.conv\.(\w+)", r"decoder.ppm.stages.\1.1.0.\2"),
        (r"decode_head\.psp_modules\.(\d)\.1\.bn\.(\w+)", r"decoder.ppm.stages.\1.1.1.\2"),
        (r"decode_head\.bottleneck\.conv\.(\w+)", r"decoder.bottleneck.0.\1"),
        (r"decode_head\.bottleneck\.bn\.(\w+)", r"decoder.bottleneck.1.\1"),
        (r"decode_head\.conv_seg\.(\w+)", r"head.1.\1"),
    ] + _AUX
    return "pspnet", kwargs, rename(state, rules, source="MMSegmentation PSPNet")


def _separable(src: str, dst: str) -> list:
    """Rules for one ``DepthwiseSeparableConvModule`` -> ``SeparableConvNormAct(inner="norm_act")``."""
    return [(src + r"\.depthwise_conv\.conv\.(\w+)", dst + r".0.\1"),
            (src + r"\.depthwise_conv\.bn\.(\w+)", dst + r".1.0.\1"),
            (src + r"\.pointwise_conv\.conv\.(\w+)", dst + r".2.\1"),
            (src + r"\.pointwise_conv\.bn\.(\w+)", dst + r".3.\1")]


def deeplabv3plus(state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """MMSegmentation ``EncoderDecoder(ResNetV1c-D8, DepthwiseSeparableASPPHead, FCNHead)`` -> pixelwise
    ``deeplabv3plus(separable_inner="norm_act", project_kernel=3, ...)``."""
    encoder, backbone = _resnet_v1c(state)
    if "decode_head.bottleneck.conv.weight" not in state or "decode_head.c1_bottleneck.conv.weight" not in state:
        raise ConfigError("only MMSegmentation 1.x's DepthwiseSeparableASPPHead (a ConvModule bottleneck and a c1 "
                          "decoder, c1_in_channels > 0) is converted")
    branches = sorted({int(k.split(".")[2]) for k in state if k.startswith("decode_head.aspp_modules.")})
    if branches != [0, 1, 2, 3]:
        raise ConfigError(f"ASPP with {len(branches)} branches is not converted; the published dilations "
                          "(1, 12, 24, 36) give 4")
    channels = int(state["decode_head.bottleneck.conv.weight"].shape[0])
    kwargs = {"num_classes": int(state["decode_head.conv_seg.weight"].shape[0]),
              "in_channels": int(state["backbone.stem.0.weight"].shape[1]), "encoder": encoder, "output_stride": 8,
              "rates": [12, 24, 36], "decoder_channels": channels, "aux": "auxiliary_head.conv_seg.weight" in state,
              "separable_inner": "norm_act", "project_kernel": 3}
    low = int(state["decode_head.c1_bottleneck.conv.weight"].shape[0])
    if low != 48:
        raise ConfigError(f"c1_channels={low} is not converted; the published 48 is")
    state = dict(state)
    # MMSeg concatenates [image pool, 1x1, rate 12, 24, 36]; pixelwise puts the image pool last.
    w = state["decode_head.bottleneck.conv.weight"].split(channels, dim=1)
    state["decode_head.bottleneck.conv.weight"] = torch.cat([*w[1:], w[0]], dim=1)
    d = "decode_head"
    rules = backbone + [
        (d + r"\.image_pool\.1\.conv\.(\w+)", r"decoder.aspp.branches.4.1.0.\1"),
        (d + r"\.image_pool\.1\.bn\.(\w+)", r"decoder.aspp.branches.4.1.1.\1"),
        (d + r"\.aspp_modules\.0\.conv\.(\w+)", r"decoder.aspp.branches.0.0.\1"),
        (d + r"\.aspp_modules\.0\.bn\.(\w+)", r"decoder.aspp.branches.0.1.\1"),
        *[r for i in (1, 2, 3) for r in _separable(d + rf"\.aspp_modules\.{i}", f"decoder.aspp.branches.{i}")],
        (d + r"\.bottleneck\.conv\.(\w+)", r"decoder.aspp.project.0.0.\1"),
        (d + r"\.bottleneck\.bn\.(\w+)", r"decoder.aspp.project.0.1.\1"),
        (d + r"\.c1_bottleneck\.conv\.(\w+)", r"decoder.reduce.0.\1"),
        (d + r"\.c1_bottleneck\.bn\.(\w+)", r"decoder.reduce.1.\1"),
        *[r for i in (0, 1) for r in _separable(d + rf"\.sep_bottleneck\.{i}", f"decoder.fuse.{i}")],
        (d + r"\.conv_seg\.(\w+)", r"head.1.\1"),
    ] + _AUX
    return "deeplabv3plus", kwargs, rename(state, rules, source="MMSegmentation DeepLabV3+")


def convert(state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """An MMSegmentation state dict -> ``(model name, create_model kwargs, pixelwise state dict)``."""
    return {"segformer": segformer, "pspnet": pspnet, "deeplabv3plus": deeplabv3plus}[architecture(state)](state)
