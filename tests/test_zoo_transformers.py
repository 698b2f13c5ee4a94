"""Transformer-era encoders and architectures: ViT/DeiT/DINOv2/EVA and Swin at any input size,
SegFormer, UPerNet and DPT parameter counts against the reference implementations."""

import pytest
import torch

from pixelwise import create_model
from pixelwise.encoders import build_encoder
from pixelwise.errors import ConfigError

TINY_VIT = {"embed_dim": 32, "depth": 4, "num_heads": 2}
TINY_SWIN = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}


def _count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["vit_small_patch16_224", "deit_tiny_patch16_224", "vit_small_patch14_dinov2",
                                  "eva02_tiny_patch14_224"])
@pytest.mark.parametrize("size", [(64, 96), (224, 160), (32, 32)])
def test_vit_encoders_give_a_four_level_pyramid_at_sizes_they_were_not_built_for(name, size):
    enc = build_encoder(name, timm_kwargs=TINY_VIT).eval()
    assert enc.reductions == [4, 8, 16, 32] and enc.out_channels == [4, 8, 16, 32]
    feats = enc(torch.randn(1, 3, *size))
    assert [tuple(f.shape[-2:]) for f in feats] == [(size[0] // r, size[1] // r) for r in enc.reductions]
    assert [f.shape[1] for f in feats] == enc.out_channels


def test_vit_position_embedding_is_resampled_not_cropped():
    # At the trained grid the encoder is timm's own forward; at another size the tokens still see every position.
    enc = build_encoder("vit_small_patch16_224", timm_kwargs={**TINY_VIT, "img_size": 64}).eval()
    tokens = enc.tokens
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = tokens(x)[-1][0]
        ref = tokens.model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
    assert torch.allclose(ours, ref, atol=1e-5)
    with torch.no_grad():
        assert tokens(torch.randn(1, 3, 96, 48))[-1][0].shape[-2:] == (6, 3)


def test_vit_cannot_be_dilated():
    with pytest.raises(ConfigError, match="cannot be dilated"):
        build_encoder("vit_small_patch16_224", output_stride=8, timm_kwargs=TINY_VIT)


@pytest.mark.parametrize("size", [(64, 96), (160, 224)])
def test_swin_any_size_channels_first(size):
    enc = build_encoder("swin_tiny_patch4_window7_224", timm_kwargs=TINY_SWIN).eval()
    feats = enc(torch.randn(1, 3, *size))
    assert [f.shape[1] for f in feats] == enc.out_channels == [16, 32, 64, 128]
    assert [tuple(f.shape[-2:]) for f in feats] == [(size[0] // r, size[1] // r) for r in enc.reductions]


@pytest.mark.parametrize("model,kwargs", [
    ("unet", {"encoder": "deit_tiny_patch16_224"}),
    ("fpn", {"encoder": "deit_tiny_patch16_224", "fpn_channels": 16, "head_channels": 16}),
    ("upernet", {"encoder": "deit_tiny_patch16_224", "channels": 16, "aux_channels": 8}),
    ("segformer", {"encoder": "swin_tiny_patch4_window7_224", "decoder_channels": 16}),
])
def test_transformer_encoders_fit_the_decoders(model, kwargs):
    net = create_model(model, num_classes=3, **kwargs).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 3, 67, 93)).shape == (1, 3, 67, 93)


def test_segformer_b0_parameter_count_matches_transformers():
    model = create_model("segformer", encoder="mit_b0", num_classes=150)
    assert _count(model) == 3_752_694
    transformers = pytest.importorskip("transformers")
    ref = transformers.SegformerForSemanticSegmentation(transformers.SegformerConfig(num_labels=150))
    assert _count(ref) == 3_752_694


@pytest.mark.parametrize("size,expected", [("mit_b1", 13_715_798), ("mit_b2", 27_461_974), ("mit_b5", 84_708_694)])
def test_segformer_sizes_match_transformers(size, expected):
    model = create_model("segformer", encoder=size, num_classes=150)
    assert _count(model) == expected
    transformers = pytest.importorskip("transformers")
    from pixelwise.encoders.mit import MIT_SIZES

    cfg = transformers.SegformerConfig(num_labels=150, hidden_sizes=MIT_SIZES[size]["dims"],
                                       depths=MIT_SIZES[size]["depths"],
                                       decoder_hidden_size=256 if size == "mit_b1" else 768)
    assert _count(transformers.SegformerForSemanticSegmentation(cfg)) == expected


def test_upernet_convnext_tiny_matches_transformers():
    model = create_model("upernet", encoder="convnext_tiny", out_norm=True, num_classes=150)
    assert _count(model) == 60_242_636
    transformers = pytest.importorskip("transformers")
    backbone = transformers.ConvNextConfig(hidden_sizes=[96, 192, 384, 768], depths=[3, 3, 9, 3],
                                           out_features=["stage1", "stage2", "stage3", "stage4"])
    ref = transformers.UperNetForSemanticSegmentation(transformers.UperNetConfig(backbone_config=backbone,
                                                                                 num_labels=150))
    assert _count(ref) == 60_242_636


def test_dpt_large_parameter_count():
    # transformers' DPT-Large (Intel/dpt-large-ade config) has 343,956,268 parameters, of which 1,182,208 never
    # run: the final LayerNorm (2 * 1024) and the first fusion block's skip unit (2 * (256 * 256 * 9 + 256)).
    model = create_model("dpt", num_classes=150)
    assert _count(model) == 343_956_268 - 1_182_208 == 342_774_060


def test_segformer_any_size_without_padding():
    model = create_model("segformer", num_classes=2, encoder_config={"dims": [8, 16, 24, 32],
                                                                   "depths": [1, 1, 1, 1], "heads": [1, 1, 1, 2]})
    assert model.pad_multiple == 1
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 45, 61)).shape == (1, 2, 45, 61)
