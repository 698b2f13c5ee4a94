"""segmentation_models.pytorch -> pixelwise: smp models with random weights built here, saved with smp's
save_pretrained, converted, logits compared (max abs difference < 1e-4). smp needs inputs divisible by 32,
so the sizes are non-square multiples of 32; the converted models also run odd sizes (padded)."""

import pytest
import torch

from convert_helpers import max_diff, randomise
from pixelwise.convert import convert
from pixelwise.hub import load_model

smp = pytest.importorskip("segmentation_models_pytorch",
                          reason="segmentation_models_pytorch (dev extra) builds the reference models")

SIZES = [(64, 96), (160, 128)]


def _check(ref, tmp_path, sizes=SIZES):
    ref.save_pretrained(tmp_path / "peer")
    model, _ = load_model(convert(tmp_path / "peer", source="smp", out=tmp_path / "out"))
    for size in sizes:
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            diff, scale = max_diff(ref(x), model(x), size)
        assert scale > 1e-2 and diff < 1e-4, (size, diff, scale)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 67, 93)).shape[-2:] == (67, 93)
    return model


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_unet(encoder, interpolation, tmp_path):
    torch.manual_seed(0)
    ref = smp.Unet(encoder_name=encoder, encoder_weights=None, classes=3, decoder_interpolation=interpolation,
                   decoder_channels=[32, 16, 16, 8, 8])
    model = _check(randomise(ref, std=0.05), tmp_path)
    assert model.config["upsampling"] == interpolation and model.config["head_kernel"] == 3


def test_segformer(tmp_path):
    torch.manual_seed(0)
    ref = smp.Segformer(encoder_name="mit_b0", encoder_weights=None, classes=4, decoder_segmentation_channels=32)
    _check(randomise(ref, std=0.05), tmp_path)


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplabv3(encoder, output_stride, tmp_path):
    torch.manual_seed(0)
    ref = smp.DeepLabV3(encoder_name=encoder, encoder_weights=None, classes=3, encoder_output_stride=output_stride,
                        decoder_atrous_rates=(6, 12, 18) if output_stride == 16 else (12, 24, 36))
    _check(randomise(ref, std=0.05), tmp_path)


def test_deeplabv3_separable_aspp_narrow_decoder(tmp_path):
    torch.manual_seed(0)
    ref = smp.DeepLabV3(encoder_name="resnet18", encoder_weights=None, classes=3, decoder_aspp_separable=True,
                        decoder_channels=32)
    model = _check(randomise(ref, std=0.05), tmp_path)
    assert model.config["separable_inner"] == "none" and model.config["decoder_channels"] == 32


@pytest.mark.parametrize("encoder", ["resnet18", "tu-resnet18"])
def test_fpn(encoder, tmp_path):
    torch.manual_seed(0)
    ref = smp.FPN(encoder_name=encoder, encoder_weights=None, classes=3, decoder_pyramid_channels=32,
                  decoder_segmentation_channels=32)
    _check(randomise(ref, std=0.05), tmp_path)


@pytest.mark.parametrize("encoder", ["resnet18", "tu-convnext_atto"])
def test_upernet(encoder, tmp_path):
    torch.manual_seed(0)
    ref = smp.UPerNet(encoder_name=encoder, encoder_weights=None, classes=3, decoder_channels=32)
    _check(randomise(ref, std=0.05), tmp_path)


@pytest.mark.parametrize("encoder,output_stride,separable", [("resnet18", 16, True), ("tu-resnet18", 16, True),
                                                             ("resnet18", 8, False)])
def test_deeplabv3plus(encoder, output_stride, separable, tmp_path):
    torch.manual_seed(0)
    ref = smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None, classes=3, decoder_channels=32,
                            encoder_output_stride=output_stride, decoder_aspp_separable=separable)
    model = _check(randomise(ref, std=0.05), tmp_path)
    assert model.config["separable_inner"] == "none" and model.config["fuse_convs"] == 1


@pytest.mark.parametrize("encoder,depth", [("resnet18", 3), ("tu-resnet18", 3), ("resnet18", 4)])
def test_pspnet(encoder, depth, tmp_path):
    torch.manual_seed(0)
    ref = smp.PSPNet(encoder_name=encoder, encoder_weights=None, classes=3, psp_out_channels=32, encoder_depth=depth,
                     upsampling=2**depth)
    model = _check(randomise(ref, std=0.05), tmp_path)
    assert model.config["bottleneck_kernel"] == 1 and not model.config["aux"]


@pytest.mark.parametrize("encoder,interpolation", [("resnet18", "nearest"), ("tu-resnet18", "bilinear")])
def test_unetplusplus(encoder, interpolation, tmp_path):
    torch.manual_seed(0)
    ref = smp.UnetPlusPlus(encoder_name=encoder, encoder_weights=None, classes=3, decoder_channels=[32, 16, 16, 8, 8],
                           decoder_interpolation=interpolation)
    model = _check(randomise(ref, std=0.05), tmp_path)
    assert model.config["last_node_channels"] == [8, 16, 16, 32] and model.config["top_channels"] == 8


@pytest.mark.parametrize("config,option", [
    ({"_model_class": "DeepLabV3Plus", "upsampling": 2}, "upsampling"),
    ({"_model_class": "DeepLabV3Plus", "aux_params": {"classes": 2}}, "aux_params"),
    ({"_model_class": "PSPNet", "encoder_depth": 3, "upsampling": 4}, "upsampling"),
    ({"_model_class": "PSPNet", "decoder_use_norm": "layernorm"}, "decoder_use_norm"),
    ({"_model_class": "UnetPlusPlus", "decoder_attention_type": "scse"}, "decoder_attention_type"),
    ({"_model_class": "UnetPlusPlus", "decoder_interpolation": "bicubic"}, "decoder_interpolation"),
    ({"_model_class": "UnetPlusPlus", "decoder_channels": [32, 16, 0, 8, 8]}, "decoder_channels"),
])
def test_unsupported_options_are_refused_by_name(config, option):
    from pixelwise.convert import convert_state
    from pixelwise.errors import ConfigError

    with pytest.raises(ConfigError, match=option):
        convert_state("smp", {}, config)


@pytest.mark.parametrize("readout,indices", [("cat", None), ("ignore", [1, 3, 5, 7])])
def test_dpt(readout, indices, tmp_path):
    torch.manual_seed(0)
    # ViT-Tiny with dynamic_img_size so smp runs every size; indices [1, 3, 5, 7] leave blocks 8-11 unused.
    ref = smp.DPT(encoder_name="tu-vit_tiny_patch16_224", encoder_weights=None, classes=3, decoder_readout=readout,
                  decoder_intermediate_channels=(16, 32, 64, 64), decoder_fusion_channels=16, img_size=64,
                  dynamic_img_size=True, encoder_output_indices=indices)
    model = _check(randomise(ref, std=0.05), tmp_path)
    assert model.config["fusion_coarsest_unit"] and model.config["encoder_kwargs"] == {"img_size": 64}
    assert model.config["indices"] == (indices or [2, 5, 8, 11])


def test_dpt_refuses_other_patch_sizes_and_depths():
    from pixelwise.convert import convert_state
    from pixelwise.errors import ConfigError

    with pytest.raises(ConfigError, match="patch-14"):
        convert_state("smp", {}, {"_model_class": "DPT", "encoder_name": "tu-vit_small_patch14_dinov2",
                                  "img_size": 56})
    with pytest.raises(ConfigError, match="encoder_depth"):
        convert_state("smp", {}, {"_model_class": "DPT", "encoder_depth": 3})
    with pytest.raises(ConfigError, match="plain ViT"):
        convert_state("smp", {}, {"_model_class": "DPT", "encoder_name": "tu-resnet18"})
