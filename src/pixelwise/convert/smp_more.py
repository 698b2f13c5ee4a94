"""segmentation_models.pytorch (smp) checkpoints -> pixelwise, continued: ``DeepLabV3Plus``,
``PSPNet``, ``UnetPlusPlus`` and ``DPT`` (``smp.py`` has the encoders and the other architectures).

Facts read from smp 0.6's ``decoders/deeplabv3``, ``decoders/pspnet`` and
``decoders/unetplusplus`` (smp is not imported):

- DeepLabV3Plus: separable convolutions without a norm between depthwise and pointwise
  (``SeparableConv2d``), a separable 3×3 conv + BN + ReLU after the ASPP, one separable fuse
  convolution, ``align_corners=True`` upsampling (decoder and head), ResNets dilated by
  ``make_dilated``; default ASPP rates 12/24/36 at output stride 16.
- PSPNet: an undilated encoder cut at ``encoder_depth`` (default 3: stride 8), pooled branches
  concatenated before the input and upsampled with ``align_corners=True``, the 1×1 branch
  without norm (a conv with bias), a 1×1 bottleneck, a 3×3 head upsampled ``align_corners=True``.
- UnetPlusPlus: nearest upsampling without parameters, ``cat([up, X^{i,j-1}, ..., X^{i,0}])``,
  the nodes inside a level as wide as the encoder feature of that level and the last node
  of level ``i`` ``decoder_channels[D-1-i]`` wide, one more block at stride 1, a 3×3 head.
- DPT: timm ViT features from ``forward_intermediates`` (no final norm), readout ``cat`` =
  [patch token, class token] -> Linear + GELU, batch-normed residual units, the coarsest fusion
  block running both its units, no auxiliary head; extra config keys are ``timm.create_model``'s.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from ..errors import ConfigError
from .keymap import rename
from .smp import RESNETS, _encoder


def _common(config: dict, arch: str) -> dict:
    if config.get("aux_params"):
        raise ConfigError(f"smp {arch} aux_params (a classification head) has no pixelwise counterpart; drop it first")
    if config.get("decoder_use_norm", "batchnorm") not in ("batchnorm", True):
        raise ConfigError(f"smp {arch} decoder_use_norm={config['decoder_use_norm']!r} is not converted; batchnorm is")
    return {"num_classes": int(config.get("classes", 1)), "in_channels": int(config.get("in_channels", 3))}


def deeplabv3plus(config: dict, state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """smp ``DeepLabV3Plus`` -> ``create_model("deeplabv3plus", separable_inner="none", aspp_conv=True, ...)``."""
    kwargs = _common(config, "DeepLabV3Plus")
    if int(config.get("upsampling", 4)) != 4:
        raise ConfigError(f"smp DeepLabV3Plus upsampling={config['upsampling']} is not converted; only the default 4 "
                          "(logits at input size) is")
    encoder, rules = _encoder(config)
    aspp_separable = bool(config.get("decoder_aspp_separable", True))
    kwargs.update({"encoder": encoder, "output_stride": int(config.get("encoder_output_stride", 16)),
                   "rates": list(config.get("decoder_atrous_rates", [12, 24, 36])),
                   "decoder_channels": int(config.get("decoder_channels", 256)), "separable": True,
                   "aspp_separable": aspp_separable, "separable_inner": "none", "aspp_conv": True, "fuse_convs": 1,
                   "upsample_align_corners": True,
                   "encoder_dilation": "smp" if config.get("encoder_name", "resnet34") in RESNETS else "timm"})
    a = r"decoder\.aspp\.0\."
    branch = ([(a + r"convs\.([1-3])\.0\.0\.(\w+)", r"decoder.aspp.0.branches.\1.0.\2"),
               (a + r"convs\.([1-3])\.0\.1\.(\w+)", r"decoder.aspp.0.branches.\1.2.\2"),
               (a + r"convs\.([1-3])\.1\.(\w+)", r"decoder.aspp.0.branches.\1.3.\2")] if aspp_separable else
              [(a + r"convs\.([1-3])\.([01])\.(\w+)", r"decoder.aspp.0.branches.\1.\2.\3")])
    rules = rules + branch + [
        (a + r"convs\.0\.([01])\.(\w+)", r"decoder.aspp.0.branches.0.\1.\2"),
        (a + r"convs\.4\.1\.(\w+)", r"decoder.aspp.0.branches.4.1.0.\1"),
        (a + r"convs\.4\.2\.(\w+)", r"decoder.aspp.0.branches.4.1.1.\1"),
        (a + r"project\.([01])\.(\w+)", r"decoder.aspp.0.project.0.\1.\2"),
        (r"decoder\.aspp\.1\.0\.(\w+)", r"decoder.aspp.1.0.\1"),
        (r"decoder\.aspp\.1\.1\.(\w+)", r"decoder.aspp.1.2.\1"),
        (r"decoder\.aspp\.2\.(\w+)", r"decoder.aspp.1.3.\1"),
        (r"decoder\.block1\.([01])\.(\w+)", r"decoder.reduce.\1.\2"),
        (r"decoder\.block2\.0\.0\.(\w+)", r"decoder.fuse.0.0.\1"),
        (r"decoder\.block2\.0\.1\.(\w+)", r"decoder.fuse.0.2.\1"),
        (r"decoder\.block2\.1\.(\w+)", r"decoder.fuse.0.3.\1"),
        (r"segmentation_head\.0\.(\w+)", r"head.1.\1"),
    ]
    return "deeplabv3plus", kwargs, rename(state, rules, source="smp DeepLabV3Plus")


def _cut_encoder(config: dict, encoder: str, depth: int, in_channels: int) -> tuple[dict | None, list]:
    """timm ``out_indices`` that keep the features smp keeps at ``encoder_depth=depth`` (strides up to
    ``2**depth``), and rules dropping what smp's own ResNets hold but never run at that depth."""
    if not 1 <= depth <= 5:
        raise ConfigError(f"smp encoder_depth={depth} is not 1..5")
    if depth == 5:
        return None, []
    from ..encoders import build_encoder

    reductions = build_encoder(encoder, in_channels=in_channels).reductions
    keep = [i for i, r in enumerate(reductions) if r <= 2**depth]
    unused = ([(rf"encoder\.layer[{depth}-4]\..+", None)] if config.get("encoder_name", "resnet34") in RESNETS
              else [])
    return {"out_indices": keep}, unused


def pspnet(config: dict, state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """smp ``PSPNet`` -> ``create_model("pspnet", output_stride=32, bottleneck_kernel=1, head_kernel=3, ...)``."""
    kwargs = _common(config, "PSPNet")
    depth = int(config.get("encoder_depth", 3))
    if int(config.get("upsampling", 8)) != 2**depth:
        raise ConfigError(f"smp PSPNet upsampling={config.get('upsampling', 8)} with encoder_depth={depth} does not "
                          f"give logits at input size; only upsampling = 2**encoder_depth ({2**depth}) is converted")
    encoder, rules = _encoder({**config, "encoder_depth": 5})
    encoder_kwargs, unused = _cut_encoder(config, encoder, depth, kwargs["in_channels"])
    kwargs.update({"encoder": encoder, "output_stride": 32, "bins": [1, 2, 3, 6], "aux": False,
                   "decoder_channels": int(config.get("psp_out_channels", 512)), "encoder_kwargs": encoder_kwargs,
                   "bottleneck_kernel": 1, "head_kernel": 3, "ppm_global_norm": False,
                   "upsample_align_corners": True})
    state = dict(state)
    # smp concatenates [pooled 1, 2, 3, 6, input]; pixelwise [input, pooled 1, 2, 3, 6].
    pooled = 4 * state["decoder.psp.blocks.0.pool.1.0.weight"].shape[0]
    w = state["decoder.conv.0.weight"]
    state["decoder.conv.0.weight"] = torch.cat([w[:, pooled:], w[:, :pooled]], dim=1)
    rules = unused + rules + [
        (r"decoder\.psp\.blocks\.([0-3])\.pool\.1\.([01])\.(\w+)", r"decoder.ppm.stages.\1.1.\2.\3"),
        (r"decoder\.conv\.([01])\.(\w+)", r"decoder.bottleneck.\1.\2"),
        (r"segmentation_head\.0\.(\w+)", r"head.1.\1"),
    ]
    return "pspnet", kwargs, rename(state, rules, source="smp PSPNet")


def unetplusplus(config: dict, state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """smp ``UnetPlusPlus`` -> ``create_model("unetplusplus", upsampling="nearest", head_kernel=3, ...)``."""
    kwargs = _common(config, "UnetPlusPlus")
    if config.get("decoder_attention_type"):
        raise ConfigError("smp UnetPlusPlus with decoder_attention_type (scSE) is not converted yet")
    if any(k.startswith("decoder.center.") for k in state):
        raise ConfigError("smp UnetPlusPlus with a center block (vgg encoders) is not converted yet")
    mode = config.get("decoder_interpolation", "nearest")
    if mode not in ("nearest", "bilinear"):
        raise ConfigError(f"smp decoder_interpolation={mode!r} is not converted; nearest and bilinear are")
    encoder, rules = _encoder(config)
    from ..encoders import build_encoder

    enc = build_encoder(encoder, in_channels=kwargs["in_channels"])
    widths, depth = list(enc.out_channels), len(enc.out_channels) - 1
    smp_channels = [int(c) for c in config.get("decoder_channels", [256, 128, 64, 32, 16])]
    if enc.reductions[0] != 2 or len(smp_channels) != depth + 1 or 0 in smp_channels:
        raise ConfigError(f"smp UnetPlusPlus decoder_channels={smp_channels} on {encoder!r} (strides {enc.reductions}) "
                          f"is not converted; {depth + 1} non-zero widths on an encoder starting at stride 2 are")
    kwargs.update({"encoder": encoder, "decoder_channels": widths[:depth], "upsampling": mode,
                   "last_node_channels": smp_channels[depth - 1::-1], "top_channels": smp_channels[depth],
                   "head_kernel": 3, "norm": "batch"})
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        m = re.fullmatch(r"decoder\.blocks\.x_(\d)_(\d)\.conv([12])\.([01])\.(\w+)", key)
        if not m:
            out[key] = value
            continue
        a, b = int(m[1]), int(m[2])
        conv = int(m[3]) - 1
        if b == depth:  # smp's last block, at stride 1
            out[f"top.{conv}.{m[4]}.{m[5]}"] = value
            continue
        i, j = depth - 1 - b, b - a + 1  # smp's x_a_b is the paper's X^{i,j}
        if conv == 0 and m[4] == "0":
            # smp concatenates [up, X^{i,j-1}, ..., X^{i,0}]; pixelwise [X^{i,0}, ..., X^{i,j-1}, up].
            up = widths[i + 1] if j == 1 else smp_channels[depth - 1 - (i + 1)] if i + j == depth else widths[i + 1]
            value = torch.cat(list(value.split([up] + [widths[i]] * j, dim=1))[::-1], dim=1)
        out[f"decoder.blocks.{i}_{j}.{conv}.{m[4]}.{m[5]}"] = value
    rules = rules + [(r"(decoder\.blocks\..+|top\..+)", r"\1"), (r"segmentation_head\.0\.(\w+)", r"heads.0.\1")]
    return "unetplusplus", kwargs, rename(out, rules, source="smp UnetPlusPlus")


_DPT_KEYS = {"_model_class", "activation", "aux_params", "classes", "decoder_fusion_channels",
             "decoder_intermediate_channels", "decoder_readout", "encoder_depth", "encoder_name",
             "encoder_output_indices", "encoder_weights", "in_channels", "dynamic_img_size"}


def dpt(config: dict, state: dict[str, Tensor]) -> tuple[str, dict, dict[str, Tensor]]:
    """smp ``DPT`` (timm ViT) -> ``create_model("dpt", fusion_batch_norm=True, fusion_coarsest_unit=True, ...)``.

    Keys of smp's config.json that are not DPT's own arguments went to ``timm.create_model``
    (``img_size``...) and go to ``encoder_kwargs``; ``dynamic_img_size`` is dropped (pixelwise
    resamples the position embedding at every size, bicubic as timm does)."""
    kwargs = _common(config, "DPT")
    name = str(config.get("encoder_name", "tu-vit_base_patch16_224.augreg_in21k"))
    if int(config.get("encoder_depth", 4)) != 4:
        raise ConfigError(f"smp DPT encoder_depth={config['encoder_depth']} is not converted; DPT taps 4 blocks")
    from ..encoders.vit import is_vit

    if not name.startswith("tu-") or not is_vit(name[3:]):
        raise ConfigError(f"smp DPT encoder {name!r} is not converted; a tu- plain ViT (vit_*, deit_*, ...) is")
    encoder_kwargs = {k: v for k, v in config.items() if k not in _DPT_KEYS}
    readout = {"cat": "project", "add": "add", "ignore": "ignore"}.get(config.get("decoder_readout", "cat"))
    if readout is None:
        raise ConfigError(f"smp DPT decoder_readout={config['decoder_readout']!r} is not one of cat, add, ignore")
    kwargs.update({"encoder": name[3:], "readout": readout, "indices": config.get("encoder_output_indices"),
                   "neck_channels": list(config.get("decoder_intermediate_channels", [256, 512, 1024, 1024])),
                   "fusion_channels": int(config.get("decoder_fusion_channels", 256)), "fusion_batch_norm": True,
                   "fusion_coarsest_unit": True, "aux": False, "encoder_kwargs": encoder_kwargs or None})
    import timm

    probe = timm.create_model(name[3:], pretrained=False, in_chans=kwargs["in_channels"], **encoder_kwargs)
    patch, blocks, prefix = probe.patch_embed.patch_size[0], len(probe.blocks), getattr(probe, "num_prefix_tokens", 1)
    if patch != 16:
        raise ConfigError(f"smp DPT on a patch-{patch} ViT ({name!r}) is not converted: smp's reassembly factors "
                          f"follow the patch size, pixelwise resamples every ViT to stride 16; patch-16 encoders are")
    if prefix > 1 and readout == "add":
        raise ConfigError(f"smp DPT decoder_readout='add' on {name!r} averages its {prefix} prefix tokens; "
                          "not converted (pixelwise adds the class token)")
    indices = config.get("encoder_output_indices") or [int(blocks / 4 * k) - 1 for k in (1, 2, 3, 4)]
    kwargs["indices"] = list(indices)
    last = max(i % blocks for i in indices)
    unit = {"residual_conv_block1": "skip_unit", "residual_conv_block2": "unit"}
    leaf = {"conv_1": "conv1", "batch_norm_1": "bn1", "conv_2": "conv2", "batch_norm_2": "bn2"}
    unused = "|".join(str(i) for i in range(last + 1, blocks)) or "none"
    rules = [
        # forward_intermediates stops at the last tapped block, without the final norm or the head.
        (rf"encoder\.model\.blocks\.({unused})\..+", None),
        (r"encoder\.model\.(norm|fc_norm|head)\..+", None),
        (r"(encoder\.model\..+)", r"\1"),
        (r"decoder\.projection_blocks\.(\d)\.project\.0\.(\w+)", r"decoder.readouts.\1.project.0.\2"),
        (r"decoder\.reassemble_blocks\.(\d)\.project_to_out_channel\.(\w+)", r"decoder.reassemble.\1.project.\2"),
        (r"decoder\.reassemble_blocks\.(\d)\.upsample\.(\w+)", r"decoder.reassemble.\1.resize.\2"),
        (r"decoder\.reassemble_blocks\.(\d)\.project_to_feature_dim\.(\w+)", r"decoder.convs.\1.\2"),
        (r"decoder\.fusion_blocks\.(\d)\.(residual_conv_block[12])\.(\w+)\.(\w+)",
         lambda m: f"decoder.fusion.{m[1]}.{unit[m[2]]}.{leaf[m[3]]}.{m[4]}"),
        (r"decoder\.fusion_blocks\.(\d)\.project\.(\w+)", r"decoder.fusion.\1.project.\2"),
        (r"segmentation_head\.head\.([014])\.(\w+)", r"head.\1.\2"),
    ]
    return "dpt", kwargs, rename(state, rules, source="smp DPT")


ARCHITECTURES = {"DeepLabV3Plus": deeplabv3plus, "PSPNet": pspnet, "UnetPlusPlus": unetplusplus, "DPT": dpt}
