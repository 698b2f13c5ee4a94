"""segmentation_models.pytorch (smp) checkpoints -> pixelwise: ``Unet``, ``Segformer``, ``DeepLabV3``, ``FPN`` and ``UPerNet``.

Input: the folder smp's ``save_pretrained`` writes (``config.json`` with ``_model_class`` and
the constructor arguments, ``model.safetensors``). smp is not imported. Encoders: smp's
ResNets (``resnet18`` ... ``resnet152``, torchvision's layout, which timm's ResNets share),
``tu-NAME`` (smp's timm wrapper: the same ``model.*`` keys as pixelwise's timm encoder) and
``mit_b0`` ... ``mit_b5``. What differs from pixelwise's defaults is reproduced by options:
U-Net ``upsampling="nearest"`` and ``head_kernel=3`` (smp's decoder and head), SegFormer and
DeepLabV3 ``upsample_align_corners=True`` (smp's ``nn.Upsample(align_corners=True)`` head),
DeepLabV3 ``encoder_dilation="smp"`` (smp's ``make_dilated`` on its own ResNets).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..errors import ConfigError
from .keymap import rename

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def _encoder(config: dict) -> tuple[str, list]:
    name = config.get("encoder_name", "resnet34")
    if config.get("encoder_depth", 5) != 5:
        raise ConfigError(f"smp encoder_depth={config['encoder_depth']} is not converted; only the default 5 is")
    if name in RESNETS:
        return name, [(r"encoder\.(.+)", r"encoder.model.\1")]
    if name.startswith("tu-"):
        return name[3:], [(r"encoder\.model\.(.+)", r"encoder.model.\1")]
    raise ConfigError(f"smp encoder {name!r} is not converted yet; use resnet18..152 or a tu-NAME (timm) encoder")


def unet(config: dict, state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """smp ``Unet`` -> ``create_model("unet", upsampling="nearest", head_kernel=3, ...)``."""
    if config.get("decoder_attention_type"):
        raise ConfigError("smp Unet with decoder_attention_type (scSE) is not converted yet")
    if config.get("decoder_use_norm", "batchnorm") not in ("batchnorm", True):
        raise ConfigError(f"smp decoder_use_norm={config['decoder_use_norm']!r} is not converted; batchnorm is")
    if config.get("aux_params"):
        raise ConfigError("smp aux_params (a classification head) has no pixelwise counterpart; drop it first")
    if any(k.startswith("decoder.center.") for k in state):
        raise ConfigError("smp Unet with a center block (vgg encoders) is not converted yet")
    encoder, rules = _encoder(config)
    decoder_channels = list(config.get("decoder_channels", [256, 128, 64, 32, 16]))
    mode = config.get("decoder_interpolation", "nearest")
    if mode not in ("nearest", "bilinear"):
        raise ConfigError(f"smp decoder_interpolation={mode!r} is not converted; nearest and bilinear are")
    kwargs = {"num_classes": int(config.get("classes", 1)), "in_channels": int(config.get("in_channels", 3)),
              "encoder": encoder, "decoder_channels": decoder_channels, "upsampling": mode, "head_kernel": 3,
              "norm": "batch"}
    from ..encoders import build_encoder

    widths = build_encoder(encoder, in_channels=kwargs["in_channels"]).out_channels  # shallow to deep
    state = dict(state)
    # smp concatenates [upsampled, skip]; pixelwise [skip, upsampled]: swap the input channels of conv1.
    for i in range(len(widths) - 1):
        key = f"decoder.blocks.{i}.conv1.0.weight"
        n_up = widths[-1] if i == 0 else decoder_channels[i - 1]
        w = state[key]
        state[key] = torch.cat([w[:, n_up:], w[:, :n_up]], dim=1)
    rules = rules + [
        (r"decoder\.blocks\.(\d+)\.conv1\.([01])\.(\w+)", r"decoder.blocks.\1.conv.0.\2.\3"),
        (r"decoder\.blocks\.(\d+)\.conv2\.([01])\.(\w+)", r"decoder.blocks.\1.conv.1.\2.\3"),
        (r"segmentation_head\.0\.(\w+)", r"head.1.\1"),
    ]
    return "unet", kwargs, rename(state, rules, source="smp Unet")


def _mit_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if not key.startswith("encoder."):
            out[key] = value
            continue
        m = re.fullmatch(r"encoder\.patch_embed(\d)\.(proj|norm)\.(\w+)", key)
        if m:
            out[f"encoder.stages.{int(m[1]) - 1}.embed.{m[2]}.{m[3]}"] = value
            continue
        m = re.fullmatch(r"encoder\.norm(\d)\.(\w+)", key)
        if m:
            out[f"encoder.stages.{int(m[1]) - 1}.norm.{m[2]}"] = value
            continue
        m = re.fullmatch(r"encoder\.block(\d)\.(\d+)\.(.+)", key)
        if not m:
            out[key] = value  # left for rename() to report
            continue
        prefix, rest = f"encoder.stages.{int(m[1]) - 1}.blocks.{m[2]}", m[3]
        if rest.startswith("attn.kv."):
            half = value.shape[0] // 2
            out[f"{prefix}.attn.k.{rest[8:]}"], out[f"{prefix}.attn.v.{rest[8:]}"] = value[:half], value[half:]
            continue
        rest = {"attn.norm.weight": "attn.sr_norm.weight", "attn.norm.bias": "attn.sr_norm.bias"}.get(rest, rest)
        rest = rest.replace("mlp.dwconv.dwconv.", "ffn.dwconv.").replace("mlp.", "ffn.")
        out[f"{prefix}.{rest}"] = value
    return out


def segformer(config: dict, state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """smp ``Segformer`` (MiT encoder) -> ``create_model("segformer", upsample_align_corners=True, ...)``."""
    name = config.get("encoder_name", "mit_b0")
    if not re.fullmatch(r"mit_b[0-5]", name):
        raise ConfigError(f"smp Segformer with encoder {name!r} is not converted yet; mit_b0..mit_b5 are")
    if config.get("encoder_depth", 5) != 5 or config.get("upsampling", 4) != 4:
        raise ConfigError("only smp Segformer's defaults encoder_depth=5, upsampling=4 are converted")
    channels = int(config.get("decoder_segmentation_channels", 256))
    kwargs = {"num_classes": int(config.get("classes", 1)), "in_channels": int(config.get("in_channels", 3)),
              "encoder": name, "decoder_channels": channels, "layer_norm_eps": 1e-6, "upsample_align_corners": True,
              "encoder_config": {"embed_eps": 1e-5}}
    state = _mit_state(state)
    levels = 4
    rules = [
        (r"(encoder\.stages\..+)", r"\1"),
        (r"decoder\.fuse_stage\.([01])\.(\w+)", r"decoder.fuse.\1.\2"),
        (r"segmentation_head\.0\.(\w+)", r"head.1.\1"),
    ]
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"decoder\.mlp_stage\.(\d)\.linear\.(\w+)", key)
        if m:  # smp lists the projections deepest first
            out[f"decoder.proj.{levels - 1 - int(m[1])}.0.{m[2]}"] = value[:, :, None, None] if m[2] == "weight" else value
        else:
            out[key] = value
    return "segformer", kwargs, rename(out, rules + [(r"(decoder\.proj\..+)", r"\1")], source="smp Segformer")


def deeplabv3(config: dict, state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """smp ``DeepLabV3`` -> ``create_model("deeplabv3", encoder_dilation="smp", upsample_align_corners=True, ...)``."""
    if config.get("upsampling") not in (None, config.get("encoder_output_stride", 8)) or config.get("aux_params"):
        raise ConfigError("smp DeepLabV3 with a custom upsampling or aux_params is not converted")
    encoder, rules = _encoder(config)
    separable = bool(config.get("decoder_aspp_separable", False))
    kwargs = {"num_classes": int(config.get("classes", 1)), "in_channels": int(config.get("in_channels", 3)),
              "encoder": encoder, "output_stride": int(config.get("encoder_output_stride", 8)),
              "rates": list(config.get("decoder_atrous_rates", [12, 24, 36])), "aux": False,
              "upsample_align_corners": True, "decoder_channels": int(config.get("decoder_channels", 256)),
              # smp's SeparableConv2d has no norm between its depthwise and pointwise convolutions.
              "separable": separable, "separable_inner": "none" if separable else "norm",
              # smp dilates its own ResNets with make_dilated; tu- encoders use timm's output_stride.
              "encoder_dilation": "smp" if config.get("encoder_name", "resnet34") in RESNETS else "timm"}
    a = r"decoder\.aspp\.convs\."
    branches = ([(a + r"([1-3])\.0\.0\.(\w+)", r"decoder.0.branches.\1.0.\2"),
                 (a + r"([1-3])\.0\.1\.(\w+)", r"decoder.0.branches.\1.2.\2"),
                 (a + r"([1-3])\.1\.(\w+)", r"decoder.0.branches.\1.3.\2")] if separable else [])
    rules = rules + branches + [
        (a + r"([0-3])\.([01])\.(\w+)", r"decoder.0.branches.\1.\2.\3"),
        (a + r"4\.1\.(\w+)", r"decoder.0.branches.4.1.0.\1"),
        (a + r"4\.2\.(\w+)", r"decoder.0.branches.4.1.1.\1"),
        (r"decoder\.aspp\.project\.([01])\.(\w+)", r"decoder.0.project.0.\1.\2"),
        (r"decoder\.conv\.(\w+)", r"decoder.1.0.\1"),
        (r"decoder\.bn\.(\w+)", r"decoder.1.1.\1"),
        (r"segmentation_head\.0\.(\w+)", r"head.\1"),
    ]
    return "deeplabv3", kwargs, rename(state, rules, source="smp DeepLabV3")


def fpn(config: dict, state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """smp ``FPN`` -> ``create_model("fpn", smooth=False, align_corners=True, ...)``."""
    if config.get("decoder_merge_policy", "add") != "add" or config.get("decoder_interpolation", "nearest") != "nearest":
        raise ConfigError("only smp FPN with decoder_merge_policy='add' and nearest interpolation is converted")
    if config.get("upsampling", 4) != 4 or config.get("aux_params"):
        raise ConfigError("smp FPN with a custom upsampling or aux_params is not converted")
    encoder, rules = _encoder(config)
    kwargs = {"num_classes": int(config.get("classes", 1)), "in_channels": int(config.get("in_channels", 3)),
              "encoder": encoder, "fpn_channels": int(config.get("decoder_pyramid_channels", 256)),
              "head_channels": int(config.get("decoder_segmentation_channels", 128)), "smooth": False,
              "align_corners": True}
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"decoder\.seg_blocks\.(\d)\.block\.(\d)\.block\.([012])\.(\w+)", key)
        if m:  # smp's block k starts at P(5-k); its Sequential(conv, GroupNorm, ReLU) is indexed 0/1/2
            out[f"decoder.branches.{3 - int(m[1])}.{m[2]}.{m[3]}.{m[4]}"] = value
        else:
            out[key] = value
    rules = rules + [
        (r"decoder\.p5\.(\w+)", r"decoder.fpn.lateral.3.\1"),
        (r"decoder\.p4\.skip_conv\.(\w+)", r"decoder.fpn.lateral.2.\1"),
        (r"decoder\.p3\.skip_conv\.(\w+)", r"decoder.fpn.lateral.1.\1"),
        (r"decoder\.p2\.skip_conv\.(\w+)", r"decoder.fpn.lateral.0.\1"),
        (r"(decoder\.branches\..+)", r"\1"),
        (r"segmentation_head\.0\.(\w+)", r"head.\1"),
    ]
    return "fpn", kwargs, rename(out, rules, source="smp FPN")


def upernet(config: dict, state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """smp ``UPerNet`` -> ``create_model("upernet", out_norm=True, aux=False, upsample_align_corners=True, ...)``."""
    if config.get("upsampling", 4) != 4 or config.get("aux_params") or config.get("decoder_use_norm",
                                                                                  "batchnorm") != "batchnorm":
        raise ConfigError("only smp UPerNet with upsampling=4, batch norm and no aux_params is converted")
    encoder, _ = _encoder(config)
    from ..encoders import build_encoder

    levels = len(build_encoder(encoder, in_channels=int(config.get("in_channels", 3))).out_channels)
    body = "encoder.body.body" if levels > 4 else "encoder.body"
    prefix = "encoder.model." if config.get("encoder_name", "").startswith("tu-") else "encoder."
    kwargs = {"num_classes": int(config.get("classes", 1)), "in_channels": int(config.get("in_channels", 3)),
              "encoder": encoder, "out_norm": True, "aux": False, "channels": int(config.get("decoder_channels", 256)),
              "upsample_align_corners": True}
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"decoder\.fpn_(lateral|conv)_blocks\.(\d)\.(?:conv_norm_relu\.)?([012])\.(\w+)", key)
        if m:  # smp lists the FPN levels deepest first
            target = "lateral" if m[1] == "lateral" else "smooth"
            out[f"decoder.{target}.{2 - int(m[2])}.{m[3]}.{m[4]}"] = value
        elif key.startswith(prefix):
            out[f"{body}.model.{key[len(prefix):]}"] = value
        else:
            out[key] = value
    rules = [
        (r"(encoder\.body\..+)", r"\1"),
        (r"decoder\.feature_norms\.(\d)\.(\w+)", r"encoder.norms.\1.\2"),
        (r"decoder\.psp\.blocks\.(\d)\.1\.([01])\.(\w+)", r"decoder.ppm.stages.\1.1.\2.\3"),
        (r"decoder\.psp\.out_conv\.([01])\.(\w+)", r"decoder.ppm_fuse.\1.\2"),
        (r"(decoder\.(lateral|smooth)\..+)", r"\1"),
        (r"decoder\.fusion_block\.([01])\.(\w+)", r"decoder.fuse.\1.\2"),
        (r"segmentation_head\.0\.(\w+)", r"head.1.\1"),
    ]
    return "upernet", kwargs, rename(out, rules, source="smp UPerNet")


ARCHITECTURES = {"Unet": unet, "Segformer": segformer, "DeepLabV3": deeplabv3, "FPN": fpn, "UPerNet": upernet}
