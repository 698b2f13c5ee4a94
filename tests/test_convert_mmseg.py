"""MMSegmentation state dicts -> pixelwise. MMSegmentation is not installed here, so the peer's state
dicts are built in the test to its published layout (the key names below are written out from
mmseg 1.x's MixVisionTransformer / SegformerHead / ResNetV1c / PSPHead / FCNHead, independently of
the converter's rules) from a pixelwise model with random weights; the converted model must
reproduce that model's logits exactly, and every MMSeg key must be consumed."""

import re

import pytest
import torch
import torch.nn.functional as F

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


def _conv_module(key):
    """pixelwise ConvNormAct index -> mmcv ConvModule name (``0`` conv, ``1`` bn)."""
    return {"0": "conv", "1": "bn"}[key]


def _separable_module(rest):
    """pixelwise SeparableConvNormAct(inner="norm_act") leaf -> mmcv DepthwiseSeparableConvModule leaf."""
    module, param = rest.rsplit(".", 1)
    name = {"0": "depthwise_conv.conv", "1.0": "depthwise_conv.bn", "2": "pointwise_conv.conv",
            "3": "pointwise_conv.bn"}[module]
    return f"{name}.{param}"


def _mmseg_deeplabv3plus_layout(model):
    """pixelwise DeepLabV3+ (MMSeg options) -> the state dict of mmseg's EncoderDecoder(ResNetV1c,
    DepthwiseSeparableASPPHead(dilations=(1, 12, 24, 36)), FCNHead): image_pool = [AdaptiveAvgPool2d,
    ConvModule], aspp_modules = [ConvModule 1x1, 3 x DepthwiseSeparableConvModule], bottleneck = ConvModule 3x3
    over cat([pool, aspp...]), c1_bottleneck = ConvModule 1x1, sep_bottleneck = 2 x DepthwiseSeparableConvModule."""
    out = {}
    for key, value in model.state_dict().items():
        if key.startswith("encoder.model."):
            module, param = key[len("encoder.model."):].rsplit(".", 1)
            out["backbone." + _STEM_MMSEG.get(module, module) + "." + param] = value
        elif m := re.fullmatch(r"decoder\.aspp\.branches\.0\.([01])\.(\w+)", key):
            out[f"decode_head.aspp_modules.0.{_conv_module(m[1])}.{m[2]}"] = value
        elif m := re.fullmatch(r"decoder\.aspp\.branches\.([123])\.(.+)", key):
            out[f"decode_head.aspp_modules.{m[1]}.{_separable_module(m[2])}"] = value
        elif m := re.fullmatch(r"decoder\.aspp\.branches\.4\.1\.([01])\.(\w+)", key):
            out[f"decode_head.image_pool.1.{_conv_module(m[1])}.{m[2]}"] = value
        elif m := re.fullmatch(r"decoder\.aspp\.project\.0\.([01])\.(\w+)", key):
            if key.endswith("0.0.weight"):  # pool first in mmseg's concatenation
                chunks = value.chunk(5, dim=1)
                value = torch.cat([chunks[4], *chunks[:4]], dim=1)
            out[f"decode_head.bottleneck.{_conv_module(m[1])}.{m[2]}"] = value
        elif m := re.fullmatch(r"decoder\.reduce\.([01])\.(\w+)", key):
            out[f"decode_head.c1_bottleneck.{_conv_module(m[1])}.{m[2]}"] = value
        elif m := re.fullmatch(r"decoder\.fuse\.([01])\.(.+)", key):
            out[f"decode_head.sep_bottleneck.{m[1]}.{_separable_module(m[2])}"] = value
        elif key.startswith("head.1."):
            out["decode_head.conv_seg." + key.rsplit(".", 1)[1]] = value
        elif m := re.fullmatch(r"aux_head\.block\.0\.([01])\.(\w+)", key):
            out[f"auxiliary_head.convs.0.{_conv_module(m[1])}.{m[2]}"] = value
        elif key.startswith("aux_head.block.2."):
            out["auxiliary_head.conv_seg." + key.rsplit(".", 1)[1]] = value
        else:
            raise AssertionError(key)
    return out


def _mmseg_sep_aspp_head(sd, c1, x, size):
    """mmseg DepthwiseSeparableASPPHead.forward + EncoderDecoder's final resize, written from its published
    definition on the mmseg-layout state dict (independent of pixelwise's modules)."""
    def conv_module(prefix, t, **conv):
        t = F.conv2d(t, sd[prefix + ".conv.weight"], None, **conv)
        t = F.batch_norm(t, sd[prefix + ".bn.running_mean"], sd[prefix + ".bn.running_var"], sd[prefix + ".bn.weight"],
                         sd[prefix + ".bn.bias"], False, 0.0, 1e-5)
        return F.relu(t)

    def separable(prefix, t, dilation=1):
        t = conv_module(prefix + ".depthwise_conv", t, padding=dilation, dilation=dilation, groups=t.shape[1])
        return conv_module(prefix + ".pointwise_conv", t)

    h = "decode_head."
    pool = conv_module(h + "image_pool.1", x.mean((2, 3), keepdim=True))
    outs = [F.interpolate(pool, size=x.shape[2:], mode="bilinear", align_corners=False),
            conv_module(h + "aspp_modules.0", x)]
    outs += [separable(h + f"aspp_modules.{i}", x, d) for i, d in ((1, 12), (2, 24), (3, 36))]
    y = conv_module(h + "bottleneck", torch.cat(outs, 1), padding=1)
    c1 = conv_module(h + "c1_bottleneck", c1)
    y = torch.cat([F.interpolate(y, size=c1.shape[2:], mode="bilinear", align_corners=False), c1], 1)
    y = separable(h + "sep_bottleneck.1", separable(h + "sep_bottleneck.0", y))
    y = F.conv2d(y, sd[h + "conv_seg.weight"], sd[h + "conv_seg.bias"])
    return F.interpolate(y, size=size, mode="bilinear", align_corners=False)


def test_deeplabv3plus_resnet50_v1c(tmp_path):
    torch.manual_seed(0)
    ours = randomise(create_model("deeplabv3plus", num_classes=3, encoder="resnet50c", output_stride=8,
                                  rates=[12, 24, 36], decoder_channels=32, aux=True, separable_inner="norm_act",
                                  project_kernel=3), std=0.02)
    state = _mmseg_deeplabv3plus_layout(ours)
    assert "decode_head.sep_bottleneck.1.pointwise_conv.bn.running_var" in state
    torch.save({"meta": {}, "state_dict": state}, tmp_path / "dlv3p.pth")
    model, _ = load_model(convert(tmp_path / "dlv3p.pth", source="mmseg", out=tmp_path / "out"))
    assert model.config["decoder_channels"] == 32 and model.config["aux"]
    for size in [(64, 80), (67, 93)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            logits = model(x)
            assert torch.allclose(logits, ours(x), atol=1e-5)
            if size[0] % 8 == 0 and size[1] % 8 == 0:  # mmseg does not pad: compare where no padding happens
                features = model.encoder(x)
                reference = _mmseg_sep_aspp_head(state, features[1], features[-1], size)
                diff = float((reference - logits).abs().max())
                assert diff < 1e-4 and float(reference.abs().max()) > 1e-2, diff


def test_unknown_layout_is_named(tmp_path):
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, tmp_path / "x.pth")
    with pytest.raises(ConfigError, match="DeepLabV3"):
        convert(tmp_path / "x.pth", source="mmseg", out=tmp_path / "out")
