"""Hugging Face transformers checkpoints -> pixelwise: SegformerForSemanticSegmentation,
UperNetForSemanticSegmentation (ConvNeXt backbone) and DPTForSemanticSegmentation (ViT).

Each function takes the transformers ``config.json`` (a dict) and the state dict and returns
``(create_model kwargs, pixelwise state dict)``. transformers is not needed: the key maps
are written from the published layouts (both the layout of the Hub checkpoints, e.g.
``segformer.encoder.block.0.0.attention.self.query``, and transformers 5's renamed modules).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .keymap import rename


def _labels(config: dict) -> int:
    if "id2label" in config:
        return len(config["id2label"])
    return int(config.get("num_labels", 2))


# ---------------------------------------------------------------- SegFormer
_SEGFORMER_OLD = [  # the Hub checkpoints' layout (transformers < 5) -> transformers 5's
    (r"segformer\.encoder\.patch_embeddings\.(\d+)\.(proj|layer_norm)\.(\w+)",
     r"segformer.stages.\1.patch_embeddings.\2.\3"),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.layer_norm_1\.(\w+)", r"segformer.stages.\1.blocks.\2.layernorm_before.\3"),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.layer_norm_2\.(\w+)", r"segformer.stages.\1.blocks.\2.layernorm_after.\3"),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.self\.query\.(\w+)",
     r"segformer.stages.\1.blocks.\2.attention.q_proj.\3"),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.self\.key\.(\w+)",
     r"segformer.stages.\1.blocks.\2.attention.k_proj.\3"),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.self\.value\.(\w+)",
     r"segformer.stages.\1.blocks.\2.attention.v_proj.\3"),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.self\.sr\.(\w+)",
     r"segformer.stages.\1.blocks.\2.attention.sequence_reduction.sequence_reduction.\3"),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.self\.layer_norm\.(\w+)",
     r"segformer.stages.\1.blocks.\2.attention.sequence_reduction.layer_norm.\3"),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.attention\.output\.dense\.(\w+)",
     r"segformer.stages.\1.blocks.\2.attention.o_proj.\3"),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.mlp\.dense1\.(\w+)", r"segformer.stages.\1.blocks.\2.mlp.fc1.\3"),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.mlp\.dense2\.(\w+)", r"segformer.stages.\1.blocks.\2.mlp.fc2.\3"),
    (r"segformer\.encoder\.block\.(\d+)\.(\d+)\.mlp\.dwconv\.dwconv\.(\w+)",
     r"segformer.stages.\1.blocks.\2.mlp.dwconv.dwconv.\3"),
    (r"segformer\.encoder\.layer_norm\.(\d+)\.(\w+)", r"segformer.stages.\1.layer_norm.\2"),
    (r"decode_head\.linear_c\.(\d+)\.proj\.(\w+)", r"decode_head.linear_projections.\1.proj.\2"),
    (r"(.*)", r"\1"),
]
_SEGFORMER = [
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.proj\.(\w+)", r"encoder.stages.\1.embed.proj.\2"),
    (r"segformer\.stages\.(\d+)\.patch_embeddings\.layer_norm\.(\w+)", r"encoder.stages.\1.embed.norm.\2"),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.layernorm_before\.(\w+)", r"encoder.stages.\1.blocks.\2.norm1.\3"),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.layernorm_after\.(\w+)", r"encoder.stages.\1.blocks.\2.norm2.\3"),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.([qkv])_proj\.(\w+)",
     r"encoder.stages.\1.blocks.\2.attn.\3.\4"),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.o_proj\.(\w+)", r"encoder.stages.\1.blocks.\2.attn.proj.\3"),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.sequence_reduction\.sequence_reduction\.(\w+)",
     r"encoder.stages.\1.blocks.\2.attn.sr.\3"),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.attention\.sequence_reduction\.layer_norm\.(\w+)",
     r"encoder.stages.\1.blocks.\2.attn.sr_norm.\3"),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.mlp\.(fc1|fc2)\.(\w+)", r"encoder.stages.\1.blocks.\2.ffn.\3.\4"),
    (r"segformer\.stages\.(\d+)\.blocks\.(\d+)\.mlp\.dwconv\.dwconv\.(\w+)", r"encoder.stages.\1.blocks.\2.ffn.dwconv.\3"),
    (r"segformer\.stages\.(\d+)\.layer_norm\.(\w+)", r"encoder.stages.\1.norm.\2"),
    (r"decode_head\.linear_projections\.(\d+)\.proj\.(\w+)", r"decoder.proj.\1.0.\2"),
    (r"decode_head\.linear_fuse\.(\w+)", r"decoder.fuse.0.\1"),
    (r"decode_head\.batch_norm\.(\w+)", r"decoder.fuse.1.\1"),
    (r"decode_head\.classifier\.(\w+)", r"head.1.\1"),
]


def segformer(config: dict, state: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """``SegformerForSemanticSegmentation`` -> ``create_model("segformer", ...)``."""
    mlp = set(config.get("mlp_ratios", [4, 4, 4, 4]))
    if len(mlp) != 1:
        raise ConfigError(f"pixelwise MiT uses one mlp_ratio for all stages; this config has {sorted(mlp)}")
    strides, patches = config.get("strides", [4, 2, 2, 2]), config.get("patch_sizes", [7, 3, 3, 3])
    if list(strides) != [4, 2, 2, 2] or list(patches) != [7, 3, 3, 3]:
        raise ConfigError(f"unsupported SegFormer patch sizes {patches} / strides {strides} (MiT uses 7/3/3/3, 4/2/2/2)")
    kwargs = {
        "num_classes": _labels(config), "in_channels": int(config.get("num_channels", 3)), "encoder": "mit_b0",
        "decoder_channels": int(config.get("decoder_hidden_size", 256)), "layer_norm_eps": 1e-5,
        "encoder_config": {"dims": list(config.get("hidden_sizes", [32, 64, 160, 256])),
                           "depths": list(config.get("depths", [2, 2, 2, 2])),
                           "heads": list(config.get("num_attention_heads", [1, 2, 5, 8])),
                           "ratios": list(config.get("sr_ratios", [8, 4, 2, 1])), "mlp_ratio": int(mlp.pop())},
    }
    state = rename(state, _SEGFORMER_OLD, source="transformers SegFormer")
    out = rename(state, _SEGFORMER, source="transformers SegFormer")
    for key in [k for k in out if k.startswith("decoder.proj.") and k.endswith("weight")]:
        out[key] = out[key][:, :, None, None]  # Linear -> 1×1 convolution
    return kwargs, out


# ---------------------------------------------------------------- UperNet (ConvNeXt)
_CONVNEXT = [
    (r"backbone\.embeddings\.patch_embeddings\.(\w+)", r"encoder.body.model.stem_0.\1"),
    (r"backbone\.embeddings\.layernorm\.(\w+)", r"encoder.body.model.stem_1.\1"),
    (r"backbone\.encoder\.stages\.(\d+)\.downsampling_layer\.(\d)\.(\w+)", r"encoder.body.model.stages_\1.downsample.\2.\3"),
    (r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.dwconv\.(\w+)", r"encoder.body.model.stages_\1.blocks.\2.conv_dw.\3"),
    (r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.(\w+)", r"encoder.body.model.stages_\1.blocks.\2.norm.\3"),
    (r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv1\.(\w+)", r"encoder.body.model.stages_\1.blocks.\2.mlp.fc1.\3"),
    (r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.pwconv2\.(\w+)", r"encoder.body.model.stages_\1.blocks.\2.mlp.fc2.\3"),
    (r"backbone\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter",
     r"encoder.body.model.stages_\1.blocks.\2.gamma"),
    (r"backbone\.hidden_states_norms\.stage(\d)\.(\w+)", r"encoder.norms.\1.\2"),
]
_CM = r"(conv|batch_norm)\.(\w+)"  # transformers' ConvModule: conv + batch_norm


def _cm(pattern: str, target: str) -> tuple[str, str]:
    return pattern + r"\." + _CM, target


_UPERHEAD = [
    (r"decode_head\.psp_modules\.(\d+)\.1\.conv\.(\w+)", r"decoder.ppm.stages.\1.1.0.\2"),
    (r"decode_head\.psp_modules\.(\d+)\.1\.batch_norm\.(\w+)", r"decoder.ppm.stages.\1.1.1.\2"),
    (r"decode_head\.bottleneck\.conv\.(\w+)", r"decoder.ppm_fuse.0.\1"),
    (r"decode_head\.bottleneck\.batch_norm\.(\w+)", r"decoder.ppm_fuse.1.\1"),
    (r"decode_head\.lateral_convs\.(\d+)\.conv\.(\w+)", r"decoder.lateral.\1.0.\2"),
    (r"decode_head\.lateral_convs\.(\d+)\.batch_norm\.(\w+)", r"decoder.lateral.\1.1.\2"),
    (r"decode_head\.fpn_convs\.(\d+)\.conv\.(\w+)", r"decoder.smooth.\1.0.\2"),
    (r"decode_head\.fpn_convs\.(\d+)\.batch_norm\.(\w+)", r"decoder.smooth.\1.1.\2"),
    (r"decode_head\.fpn_bottleneck\.conv\.(\w+)", r"decoder.fuse.0.\1"),
    (r"decode_head\.fpn_bottleneck\.batch_norm\.(\w+)", r"decoder.fuse.1.\1"),
    (r"decode_head\.classifier\.(\w+)", r"head.1.\1"),
    (r"auxiliary_head\.convs\.0\.conv\.(\w+)", r"aux_head.block.0.0.\1"),
    (r"auxiliary_head\.convs\.0\.batch_norm\.(\w+)", r"aux_head.block.0.1.\1"),
    (r"auxiliary_head\.classifier\.(\w+)", r"aux_head.block.2.\1"),
]


def upernet(config: dict, state: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """``UperNetForSemanticSegmentation`` with a ConvNeXt backbone -> ``create_model("upernet", ...)``."""
    backbone = config.get("backbone_config") or {}
    if backbone.get("model_type", "convnext") != "convnext":
        raise ConfigError(f"UperNet backbone {backbone.get('model_type')!r} is not converted yet; ConvNeXt is")
    if config.get("auxiliary_num_convs", 1) != 1 or config.get("auxiliary_concat_input", False):
        raise ConfigError("only UperNet's default auxiliary head (one conv, no concatenated input) is converted")
    depths = list(backbone.get("depths", [3, 3, 9, 3]))
    dims = list(backbone.get("hidden_sizes", [96, 192, 384, 768]))
    kwargs = {"num_classes": _labels(config), "in_channels": int(backbone.get("num_channels", 3)),
              "encoder": "convnext_tiny", "out_norm": True, "channels": int(config.get("hidden_size", 512)),
              "bins": list(config.get("pool_scales", [1, 2, 3, 6])),
              "aux": bool(config.get("use_auxiliary_head", True)),
              "aux_channels": int(config.get("auxiliary_channels", 256)),
              "encoder_kwargs": {"dims": dims, "depths": depths}}
    stages = backbone.get("out_features") or [f"stage{i}" for i in range(1, 5)]
    if list(stages) != ["stage1", "stage2", "stage3", "stage4"]:
        raise ConfigError(f"UperNet needs the ConvNeXt out_features stage1..stage4, got {stages}")
    state = {k.replace("hidden_states_norms.stage", "hidden_states_norms.stage_"): v for k, v in state.items()}
    state = {_shift_stage(k): v for k, v in state.items()}
    return kwargs, rename(state, _CONVNEXT + _UPERHEAD, source="transformers UperNet")


def _shift_stage(key: str) -> str:
    # transformers names the output norms stage1..stage4; pixelwise indexes them 0..3.
    if key.startswith("backbone.hidden_states_norms.stage_"):
        rest = key[len("backbone.hidden_states_norms.stage_"):]
        index, name = rest.split(".", 1)
        return f"backbone.hidden_states_norms.stage{int(index) - 1}.{name}"
    return key


# ---------------------------------------------------------------- DPT (ViT)
_DPT = [
    (r"dpt\.embeddings\.cls_token", r"encoder.model.cls_token"),
    (r"dpt\.embeddings\.position_embeddings", r"encoder.model.pos_embed"),
    (r"dpt\.embeddings\.patch_embeddings\.projection\.(\w+)", r"encoder.model.patch_embed.proj.\1"),
    (r"dpt\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(\w+)", r"encoder.model.blocks.\1.attn.proj.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.intermediate\.dense\.(\w+)", r"encoder.model.blocks.\1.mlp.fc1.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.output\.dense\.(\w+)", r"encoder.model.blocks.\1.mlp.fc2.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.layernorm_before\.(\w+)", r"encoder.model.blocks.\1.norm1.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.layernorm_after\.(\w+)", r"encoder.model.blocks.\1.norm2.\2"),
    (r"dpt\.encoder\.layer\.(\d+)\.attention\.qkv\.(\w+)", r"encoder.model.blocks.\1.attn.qkv.\2"),
    (r"dpt\.layernorm\.\w+", None),  # the final LayerNorm: never used for segmentation
    (r"dpt\.pooler\..*", None),
    (r"neck\.reassemble_stage\.readout_projects\.(\d+)\.0\.(\w+)", r"decoder.readouts.\1.project.0.\2"),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.projection\.(\w+)", r"decoder.reassemble.\1.project.\2"),
    (r"neck\.reassemble_stage\.layers\.(\d+)\.resize\.(\w+)", r"decoder.reassemble.\1.resize.\2"),
    (r"neck\.convs\.(\d+)\.(\w+)", r"decoder.convs.\1.\2"),
    (r"neck\.fusion_stage\.layers\.0\.residual_layer1\..*", None),  # built but never run by transformers
    (r"neck\.fusion_stage\.layers\.(\d+)\.projection\.(\w+)", r"decoder.fusion.\1.project.\2"),
    (r"neck\.fusion_stage\.layers\.(\d+)\.residual_layer1\.convolution(\d)\.(\w+)", r"decoder.fusion.\1.skip_unit.conv\2.\3"),
    (r"neck\.fusion_stage\.layers\.(\d+)\.residual_layer1\.batch_norm(\d)\.(\w+)", r"decoder.fusion.\1.skip_unit.bn\2.\3"),
    (r"neck\.fusion_stage\.layers\.(\d+)\.residual_layer2\.convolution(\d)\.(\w+)", r"decoder.fusion.\1.unit.conv\2.\3"),
    (r"neck\.fusion_stage\.layers\.(\d+)\.residual_layer2\.batch_norm(\d)\.(\w+)", r"decoder.fusion.\1.unit.bn\2.\3"),
    (r"head\.head\.(\d)\.(\w+)", r"head.\1.\2"),
    (r"auxiliary_head\.head\.(\d)\.(\w+)", r"aux_head.\1.\2"),
]


def dpt(config: dict, state: dict[str, Tensor]) -> tuple[dict, dict[str, Tensor]]:
    """``DPTForSemanticSegmentation`` (plain ViT, not the hybrid) -> ``create_model("dpt", ...)``."""
    if config.get("is_hybrid") or config.get("backbone_config"):
        raise ConfigError("DPT-Hybrid and DPT with a separate backbone are not converted yet; plain ViT DPT is")
    if list(config.get("reassemble_factors", [4, 2, 1, 0.5])) != [4, 2, 1, 0.5]:
        raise ConfigError(f"DPT reassemble_factors {config['reassemble_factors']} unsupported (4, 2, 1, 0.5 are)")
    hidden = int(config.get("hidden_size", 768))
    depth = int(config.get("num_hidden_layers", 12))
    indices = list(config.get("backbone_out_indices", [2, 5, 8, 11]))
    kwargs = {"num_classes": _labels(config), "in_channels": int(config.get("num_channels", 3)),
              "encoder": "vit_base_patch16_224", "indices": indices, "readout": config.get("readout_type", "project"),
              "neck_channels": list(config.get("neck_hidden_sizes", [96, 192, 384, 768])),
              "fusion_channels": int(config.get("fusion_hidden_size", 256)),
              "fusion_batch_norm": bool(config.get("use_batch_norm_in_fusion_residual", False)),
              "aux": bool(config.get("use_auxiliary_head", True)), "pos_interpolation": "bilinear",
              "layer_norm_eps": float(config.get("layer_norm_eps", 1e-12)),
              "encoder_kwargs": {"embed_dim": hidden, "depth": depth,
                                 "num_heads": int(config.get("num_attention_heads", 12)),
                                 "mlp_ratio": int(config.get("intermediate_size", 4 * hidden)) / hidden,
                                 "img_size": int(config.get("image_size", 384)),
                                 "patch_size": int(config.get("patch_size", 16)),
                                 "qkv_bias": bool(config.get("qkv_bias", True))}}
    last = max(i % depth for i in indices)
    fused: dict[str, Tensor] = {}
    for key in list(state):
        parts = key.split(".")
        if key.startswith("dpt.encoder.layer.") and int(parts[3]) > last:
            continue  # blocks after the last tapped one never run
        if ".attention.attention.query." in key:
            prefix, leaf = key.split(".attention.attention.query.")
            fused[f"{prefix}.attention.qkv.{leaf}"] = torch.cat(
                [state[key], state[f"{prefix}.attention.attention.key.{leaf}"],
                 state[f"{prefix}.attention.attention.value.{leaf}"]], dim=0)
        elif ".attention.attention.key." in key or ".attention.attention.value." in key:
            continue
        else:
            fused[key] = state[key]
    return kwargs, rename(fused, _DPT, source="transformers DPT")


ARCHITECTURES = {
    "SegformerForSemanticSegmentation": ("segformer", segformer),
    "UperNetForSemanticSegmentation": ("upernet", upernet),
    "DPTForSemanticSegmentation": ("dpt", dpt),
}
