"""MMSegmentation state dicts -> pixelwise. MMSegmentation is not installed here, so the peer's state
dicts are built in the test to its published layout (the key names below are written out from
mmseg 1.x's MixVisionTransformer / SegformerHead / ResNetV1c / PSPHead / FCNHead, independently of
the converter's rules) from a pixelwise model with random weights; the converted model must
reproduce that model's logits exactly, and every MMSeg key must be consumed."""

import re

import pytest
import torch

from convert_helpers import randomise
from pixelwise import create_model
from pixelwise.convert import convert
from pixelwise.errors import ConfigError
from pixelwise.hub import load_model

# Heads are not in the weights: the converter assumes the paper's 1/2/5/8, so the widths divide by them.
TINY_MIT = {"dims": [8, 16, 40, 64], "depths": [1, 2, 1, 1], "heads": [1, 2, 5, 8], "ratios": [8, 4, 2, 1]}


def _mmseg_segformer_layout(model):
    """pixelwise SegFormer -> the state dict an mmseg SegFormer of the same shape would have."""
    sd, out = model.state_dict(), {}
    for key, value in sd.items():
        m = re.fullmatch(r"encoder\.stages\.(\d)\.(.+)", key)
        if m:
            i, rest = m[1], m[2]
            b = re.fullmatch(r"blocks\.(\d+)\.(.+)", rest)
            if rest.startswith("embed.proj."):
                out[f"backbone.layers.{i}.0.projection.{rest.split('.')[-1]}"] = value
            elif rest.startswith("embed.norm."):
                out[f"backbone.layers.{i}.0.norm.{rest.split('.')[-1]}"] = value
            elif rest.startswith("norm."):
                out[f"backbone.layers.{i}.2.{rest.split('.')[-1]}"] = value
            elif b:
                j, leaf = b[1], b[2]
                base = f"backbone.layers.{i}.1.{j}"
                if leaf.startswith(("attn.q.", "attn.k.", "attn.v.")):
                    continue  # packed below
                mapping = {"attn.proj": "attn.attn.out_proj", "attn.sr": "attn.sr", "attn.sr_norm": "attn.norm",
                           "norm1": "norm1", "norm2": "norm2", "ffn.fc1": "ffn.layers.0", "ffn.dwconv": "ffn.layers.1",
                           "ffn.fc2": "ffn.layers.4"}
                module, param = leaf.rsplit(".", 1)
                if module in ("ffn.fc1", "ffn.fc2") and param == "weight":
                    value = value[:, :, None, None]  # mmseg's Mix-FFN uses 1×1 convolutions
                out[f"{base}.{mapping[module]}.{param}"] = value
            continue
        m = re.fullmatch(r"decoder\.proj\.(\d)\.([01])\.(\w+)", key)
        if m:
            out[f"decode_head.convs.{m[1]}.{'conv' if m[2] == '0' else 'bn'}.{m[3]}"] = value
        elif key.startswith("decoder.fuse.0."):
            out["decode_head.fusion_conv.conv." + key.rsplit(".", 1)[1]] = torch.cat(value.chunk(4, dim=1)[::-1], 1)
        elif key.startswith("decoder.fuse.1."):
            out["decode_head.fusion_conv.bn." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("head.1."):
            out["decode_head.conv_seg." + key.rsplit(".", 1)[1]] = value
        else:
            raise AssertionError(key)
    for i, depth in enumerate(TINY_MIT["depths"]):
        for j in range(depth):
            for param in ("weight", "bias"):
                out[f"backbone.layers.{i}.1.{j}.attn.attn.in_proj_{param}"] = torch.cat(
                    [sd[f"encoder.stages.{i}.blocks.{j}.attn.{x}.{param}"] for x in "qkv"])
    return out


def test_segformer(tmp_path):
    torch.manual_seed(0)
    ours = randomise(create_model("segformer", num_classes=4, encoder_config=TINY_MIT, decoder_channels=16,
                                  proj_norm=True, layer_norm_eps=1e-6), std=0.1)
    state = _mmseg_segformer_layout(ours)
    assert "backbone.layers.1.1.1.attn.attn.in_proj_weight" in state and "decode_head.fusion_conv.conv.weight" in state
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "segformer.pth")  # mmseg's checkpoint wrapper
    model, _ = load_model(convert(tmp_path / "segformer.pth", source="mmseg", out=tmp_path / "out"))
    assert model.config["encoder_config"]["ratios"] == [8, 4, 2, 1]
    for size in [(64, 64), (67, 93)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            assert torch.allclose(model(x), ours(x), atol=1e-5)


_STEM_MMSEG = {"conv1.0": "stem.0", "conv1.1": "stem.1", "conv1.3": "stem.3", "conv1.4": "stem.4",
               "conv1.6": "stem.6", "bn1": "stem.7"}


def _mmseg_pspnet_layout(model):
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.model."):
            rest = key[len("encoder.model."):]
            module, param = rest.rsplit(".", 1)
            out["backbone." + (_STEM_MMSEG.get(module, module)) + "." + param] = value
        elif m := re.fullmatch(r"decoder\.ppm\.stages\.(\d)\.1\.([01])\.(\w+)", key):
            out[f"decode_head.psp_modules.{m[1]}.1.{'conv' if m[2] == '0' else 'bn'}.{m[3]}"] = value
        elif m := re.fullmatch(r"decoder\.bottleneck\.([01])\.(\w+)", key):
            out[f"decode_head.bottleneck.{'conv' if m[1] == '0' else 'bn'}.{m[2]}"] = value
        elif key.startswith("head.1."):
            out["decode_head.conv_seg." + key.rsplit(".", 1)[1]] = value
        elif m := re.fullmatch(r"aux_head\.block\.0\.([01])\.(\w+)", key):
            out[f"auxiliary_head.convs.0.{'conv' if m[1] == '0' else 'bn'}.{m[2]}"] = value
        elif key.startswith("aux_head.block.2."):
            out["auxiliary_head.conv_seg." + key.rsplit(".", 1)[1]] = value
        else:
            raise AssertionError(key)
    return out


def test_pspnet_resnet50_v1c(tmp_path):
    torch.manual_seed(0)
    ours = randomise(create_model("pspnet", num_classes=3, encoder="resnet50c"), std=0.02)
    state = _mmseg_pspnet_layout(ours)
    assert "backbone.stem.6.weight" in state and "backbone.layer3.5.conv2.weight" in state
    torch.save({"state_dict": state}, tmp_path / "psp.pth")
    model, _ = load_model(convert(tmp_path / "psp.pth", source="mmseg", out=tmp_path / "out"))
    # MMSeg's ResNetV1c-D8: stage 3's first block keeps dilation 1, the rest 2 (contract_dilation).
    dil = {n: m.dilation for n, m in model.named_modules() if n.endswith(("layer3.0.conv2", "layer3.1.conv2"))}
    assert sorted(dil.values()) == [(1, 1), (2, 2)]
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.allclose(model(x), ours(x), atol=1e-5)


def test_unknown_layout_is_named(tmp_path):
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "x.pth")
    with pytest.raises(ConfigError, match="DeepLabV3"):
        convert(tmp_path / "x.pth", source="mmseg", out=tmp_path / "out")
