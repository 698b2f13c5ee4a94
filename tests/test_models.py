"""Architectures: shapes on odd sizes, backward, faithful parameter counts, FCN details."""

import pytest
import torch
import torch.nn.functional as F

from pixelwise import create_model, list_models
from pixelwise.errors import ConfigError
from pixelwise.models import SegmentationOutput
from pixelwise.models.fcn import bilinear_kernel, upsampler
from pixelwise.models.unet import UNetEncoder
from zoo_configs import TINY, TINY_VOLUMETRIC

VOLUMETRIC = set(TINY_VOLUMETRIC)  # tested on (N, C, D, H, W) inputs in test_zoo_unet.py


def test_every_registered_model_has_a_tiny_config():
    assert set(list_models()) == set(TINY) | VOLUMETRIC


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("size", [(67, 93), (32, 32), (1, 5)])
def test_forward_any_size_and_backward(name, size):
    model = create_model(name, num_classes=3, **TINY[name])
    x = torch.randn(2, 3, *size, requires_grad=True)
    y = model(x)
    if isinstance(y, SegmentationOutput):  # training-mode extras are well-formed
        assert len(y.aux) == len(y.aux_weights)
        assert len(y.aux) >= 1 or y.boundary is not None
        assert all(a.shape == (2, 3, *size) for a in y.aux)
        total = y.logits.square().mean() + sum(a.square().mean() for a in y.aux)
        if y.boundary is not None:
            assert y.boundary.shape == (2, 1, *size)
            total = total + y.boundary.square().mean()
        y = y.logits
    else:
        total = y.square().mean()
    assert y.shape == (2, 3, *size)
    total.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x.detach()).shape == (2, 3, *size)


def _conv_params(cin, cout, k):
    return cin * cout * k * k + cout


def test_paper_unet_parameter_count_matches_the_paper_layout():
    # Independent count of Ronneberger et al. Fig. 1 with padded convs and 2 output classes.
    widths = [64, 128, 256, 512, 1024]
    expected = _conv_params(1, 64, 3) + _conv_params(64, 64, 3)
    for a, b in zip(widths, widths[1:]):
        expected += _conv_params(a, b, 3) + _conv_params(b, b, 3)
    for a, b in zip(widths[::-1], widths[-2::-1]):  # 1024->512, ... 128->64
        expected += _conv_params(a, b, 2)  # 2x2 up-convolution (transposed)
        expected += _conv_params(2 * b, b, 3) + _conv_params(b, b, 3)
    expected += _conv_params(64, 2, 1)
    model = create_model("unet", encoder=None, in_channels=1, num_classes=2)
    assert sum(p.numel() for p in model.parameters()) == expected == 31_030_658
    assert model(torch.randn(1, 1, 97, 131)).shape == (1, 2, 97, 131)
    # No normalisation layers in the paper's network.
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_unet_encoder_levels():
    enc = UNetEncoder(1, base_channels=64, depth=4)
    feats = enc(torch.randn(1, 1, 32, 48))
    assert [f.shape[1] for f in feats] == [64, 128, 256, 512, 1024]
    assert [f.shape[-1] for f in feats] == [48, 24, 12, 6, 3]


def test_fcn8s_parameter_count_is_vgg16_plus_fcn_layers():
    # VGG16 conv part (torchvision's features) + fc6 (7x7, 4096) + fc7 + score and deconv layers.
    import torchvision

    vgg = torchvision.models.vgg16()
    features = sum(p.numel() for p in vgg.features.parameters())
    fc = _conv_params(512, 4096, 7) + _conv_params(4096, 4096, 1)
    c = 21
    scores = _conv_params(4096, c, 1) + _conv_params(512, c, 1) + _conv_params(256, c, 1)
    deconv = c * c * 4 * 4 * 2 + c * c * 16 * 16
    model = create_model("fcn8s", num_classes=21)
    assert sum(p.numel() for p in model.parameters()) == features + fc + scores + deconv
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 97, 131)).shape == (1, 21, 97, 131)


def test_bilinear_deconv_equals_bilinear_interpolation_inside():
    x = torch.randn(1, 3, 6, 7)
    for factor in (2, 8):
        up = upsampler(3, factor)
        y = up(x)
        ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
        assert y.shape == ref.shape
        m = factor  # borders differ (transposed conv sees zeros outside); compare the interior
        assert torch.allclose(y[..., m:-m, m:-m], ref[..., m:-m, m:-m], atol=1e-5)


def test_bilinear_kernel_is_per_channel():
    k = bilinear_kernel(4, 4)
    off_diagonal = k.clone()
    off_diagonal[range(4), range(4)] = 0
    assert off_diagonal.abs().sum() == 0
    assert torch.allclose(k[0, 0].sum(), torch.tensor(4.0))  # stride-2 kernel sums to stride^2


def test_fcn_skip_scores_start_at_zero_so_8s_equals_its_coarse_path():
    torch.manual_seed(0)
    m8 = create_model("fcn8s", num_classes=3, fc_channels=16).eval()
    assert m8.decoder.score_pool3.weight.abs().sum() == 0
    assert m8.decoder.score_pool4.weight.abs().sum() == 0
    assert not m8.decoder.upscore_final.weight.requires_grad  # fixed bilinear as in the paper
    assert m8.decoder.upscore2.weight.requires_grad


def test_fcn_loads_convolutionalised_vgg_classifier(tmp_path):
    import torchvision

    vgg = torchvision.models.vgg16()
    path = tmp_path / "vgg16.pth"
    torch.save(vgg.state_dict(), path)
    model = create_model("fcn32s", num_classes=21, encoder_weights=str(path))
    assert torch.equal(model.encoder.features[28].weight, vgg.features[28].weight)
    fc6 = model.decoder.fc[0]
    assert torch.equal(fc6.weight.flatten(1), vgg.classifier[0].weight)
    # The convolution computes what the fully connected layer computed on a 7x7 pool5.
    pool5 = torch.randn(1, 512, 7, 7)
    conv_out = F.conv2d(pool5, fc6.weight, fc6.bias)[0, :, 0, 0]
    fc_out = vgg.classifier[0](pool5.flatten(1))[0]
    assert torch.allclose(conv_out, fc_out, atol=1e-4)


def test_unknown_model_and_argument_errors_name_them():
    with pytest.raises(KeyError, match="unknown model 'unetz'.*unet"):
        create_model("unetz", num_classes=2)
    with pytest.raises(ConfigError, match="base_chanels"):
        create_model("unet", num_classes=2, base_chanels=8)


@pytest.mark.parametrize("encoder", ["resnet18", "tv:resnet18", "vgg16", "tv:mobilenet_v2"])
def test_unet_on_encoders(encoder):
    model = create_model("unet", encoder=encoder, num_classes=4, decoder_channels=None)
    y = model(torch.randn(1, 3, 45, 70))
    assert y.shape == (1, 4, 45, 70)


def test_unet_on_dilated_encoder():
    from pixelwise.encoders import build_encoder
    from pixelwise.models.unet import UNetDecoder

    enc = build_encoder("resnet18", output_stride=8)
    dec = UNetDecoder(enc.out_channels, enc.reductions, [64, 32, 16, 8, 8])
    feats = enc(torch.randn(1, 3, 64, 64))
    assert dec(feats).shape == (1, 8, 64, 64)


def test_segnet_parameter_count_and_decoder_uses_pooling_indices():
    model = create_model("segnet", num_classes=12).eval()
    # VGG16-BN convolutions twice (encoder + mirrored decoder) ~ the paper's 29.5 M.
    assert sum(p.numel() for p in model.parameters()) == 29_446_220
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())  # no learned upsampling
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats, indices, sizes = model.encoder.forward_with_indices(x)
        out = model.decoder(feats, indices, sizes)
        swapped = [i.flip(-1) for i in indices]  # same values, placed at other (valid) positions
        out_swapped = model.decoder(feats, swapped, sizes)
        assert not torch.allclose(out, out_swapped)
        # Unpooling writes each pooled maximum back exactly where it was taken from.
        pre_pool = model.encoder.features[:6](x)  # conv1_1, bn, relu, conv1_2, bn, relu
        restored = F.max_unpool2d(feats[0], indices[0], 2, 2, output_size=sizes[0][-2:])
        kept = restored != 0
        assert torch.equal(restored[kept], pre_pool[kept])


def test_deeplabv3_matches_torchvision_parameter_count_and_returns_aux_in_training():
    import torchvision

    model = create_model("deeplabv3", num_classes=21)  # ResNet-50, output stride 8, aux head
    reference = torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for p in reference.parameters()) == 42_004_074
    small = create_model("deeplabv3", num_classes=3, encoder="resnet18").train()
    out = small(torch.randn(2, 3, 35, 45))
    assert out.logits.shape == out.aux[0].shape == (2, 3, 35, 45) and out.aux_weights == [0.4]
    assert max(small.encoder.reductions) == 8  # dilated, not strided, after stride 8


def test_deeplabv3plus_decoder_fuses_stride4_features():
    model = create_model("deeplabv3plus", num_classes=3, encoder="resnet18").eval()
    assert max(model.encoder.reductions) == 16
    assert model.decoder.low_index == model.encoder.reductions.index(4)
    with torch.no_grad():
        feats = model.encoder(torch.randn(1, 3, 64, 64))
        assert model.decoder(feats).shape == (1, 256, 16, 16)  # stride 4
    with pytest.raises(ConfigError, match="output_stride must be 8 or 16"):
        create_model("deeplabv3plus", num_classes=3, encoder="resnet18", output_stride=32)


def test_fcn_dilated_matches_torchvision_fcn_resnet50_parameter_count():
    import torchvision

    model = create_model("fcn_dilated", num_classes=21)
    reference = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=21,
                                                             aux_loss=True)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters()) == 35_322_218


def test_deeplabv1_largefov_matches_the_papers_parameter_count():
    model = create_model("deeplabv1", num_classes=21)
    # Chen et al. 2015, Table 2: DeepLab-LargeFOV has 20.5 M parameters.
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 20.5
    assert model.encoder.reductions[-1] == 8
    fc6 = model.decoder[0]
    assert fc6.dilation == (12, 12) and fc6.kernel_size == (3, 3) and fc6.out_channels == 1024


def test_deeplabv2_sums_four_atrous_classifiers():
    model = create_model("deeplabv2", num_classes=5, encoder="resnet18").eval()
    assert [b.dilation[0] for b in model.decoder.branches] == [6, 12, 18, 24]
    feats = model.encoder(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        total = sum(b(feats[-1]) for b in model.decoder.branches)
        assert torch.allclose(model.decoder(feats), total)


def test_pspnet_aux_head_on_stage3_with_weight_04():
    model = create_model("pspnet", num_classes=4, encoder="resnet18").train()
    out = model(torch.randn(2, 3, 40, 56))
    assert out.aux_weights == [0.4] and out.aux[0].shape == (2, 4, 40, 56)
    assert model.aux_head.block[0][0].in_channels == model.encoder.out_channels[-2]
    model.eval()
    assert isinstance(model(torch.randn(1, 3, 40, 56)), torch.Tensor)  # no aux at inference


def test_unet_family_blocks_and_gates():
    from pixelwise.layers import (
        AttentionGate,
        RecurrentResidualBlock,
        ResidualDoubleConv,
    )

    res = create_model("resunet", num_classes=2, base_channels=8, depth=2)
    assert sum(isinstance(m, ResidualDoubleConv) for m in res.modules()) == 5  # 3 encoder + 2 decoder levels
    r2 = create_model("r2unet", num_classes=2, base_channels=8, depth=2)
    assert sum(isinstance(m, RecurrentResidualBlock) for m in r2.modules()) == 5
    att = create_model("attention_unet", num_classes=2, base_channels=8, depth=2).eval()
    gates = [m for m in att.modules() if isinstance(m, AttentionGate)]
    assert len(gates) == 2  # one per skip connection
    with torch.no_grad():
        att(torch.randn(1, 3, 20, 28))
    assert gates[0].last_alpha.shape == (1, 1, 10, 14) and gates[-1].last_alpha.shape == (1, 1, 20, 28)


def test_attention_gate_matches_the_formula():
    from pixelwise.layers import AttentionGate

    gate = AttentionGate(4, 6, 3)
    x, g = torch.randn(2, 4, 8, 8), torch.randn(2, 6, 4, 4)
    out = gate(x, g)
    # alpha = sigmoid(psi(relu(W_x x_sub + W_g g))) upsampled; x_sub = stride-2 subsampling of x.
    theta = torch.einsum("oc,nchw->nohw", gate.theta_x.weight[:, :, 0, 0], x[:, :, ::2, ::2])
    phi = gate.phi_g(g)
    alpha = torch.sigmoid(gate.psi(torch.relu(theta + phi)))
    alpha = F.interpolate(alpha, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(out, x * alpha, atol=1e-6)
    assert ((alpha > 0) & (alpha < 1)).all()


def test_recurrent_conv_reuses_one_convolution():
    from pixelwise.layers.unet_blocks import RecurrentConv

    rc = RecurrentConv(3, steps=2, norm="none").eval()
    x = torch.randn(1, 3, 6, 6)
    conv = rc.conv
    expected = conv(x + conv(x + conv(x)))  # h0 = f(x); h1 = f(x + h0); h2 = f(x + h1)
    assert torch.allclose(rc(x), expected)
    assert sum(p.numel() for p in rc.parameters()) == 3 * 3 * 9 + 3


def test_flop_count_of_the_paper_unet_matches_an_analytic_count():
    from pixelwise.models.stats import canonical_stats

    s = 64  # 1 x 1 x 64 x 64, 2 classes: count 2 * C_in * C_out * k^2 per output pixel by hand
    widths = [64, 128, 256, 512, 1024]
    flops = 2 * (1 * 64 + 64 * 64) * 9 * s * s
    for i, (a, b) in enumerate(zip(widths, widths[1:]), start=1):
        r = s // 2**i
        flops += 2 * (a * b + b * b) * 9 * r * r
    for i, (a, b) in enumerate(zip(widths[::-1], widths[-2::-1])):
        r_in = s // 2 ** (4 - i)
        flops += 2 * a * b * 4 * r_in * r_in  # 2x2 up-convolution: every input pixel feeds 4 outputs
        r_out = 2 * r_in
        flops += 2 * (2 * b * b + b * b) * 9 * r_out * r_out
    flops += 2 * 64 * 2 * s * s
    stats = canonical_stats("unet", size=s)
    assert stats["gflops"] * 1e9 == pytest.approx(flops, rel=1e-9)
    assert stats["params"] == 31_030_658


def _ce_of(output, target):
    if isinstance(output, SegmentationOutput):
        loss = F.cross_entropy(output.logits, target)
        return loss + sum(w * F.cross_entropy(a, target) for a, w in zip(output.aux, output.aux_weights))
    return F.cross_entropy(output, target)


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_model_fits_a_synthetic_batch(name):
    """A few Adam steps on two synthetic images lower the cross-entropy (the model can learn)."""
    from pixelwise.data import SyntheticShapes

    torch.manual_seed(0)
    ds = SyntheticShapes(2, image_size=32, seed=1)
    pairs = [ds.generate(i) for i in range(2)]
    x = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255 for im, _ in pairs])
    y = torch.stack([torch.from_numpy(m) for _, m in pairs])
    model = create_model(name, num_classes=5, **TINY[name]).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(5):
        loss = _ce_of(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert _ce_of(model(x), y).item() < first
