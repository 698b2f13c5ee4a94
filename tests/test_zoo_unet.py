"""U-Net family zoo: U-Net++, Dense U-Net, MultiResUNet, 3D U-Net."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pixelwise import create_model
from pixelwise.data import SyntheticShapes
from pixelwise.layers.dense import DenseBlock, DenseLevel
from pixelwise.models import SegmentationOutput
from pixelwise.models import dense_unet as _dense_unet  # noqa: F401 - registers
from pixelwise.models import multiresunet as mr
from pixelwise.models import unet3d as u3
from pixelwise.models import unetplusplus as upp

TINY_2D = {
    "unetplusplus": {"base_channels": 4, "depth": 3},
    "unetplusplus_ds": {"base_channels": 4, "depth": 3, "deep_supervision": True},
    "unetplusplus_resnet10t": {"encoder": "resnet10t", "decoder_channels": [4, 4, 8, 8], "deep_supervision": True},
    "dense_unet": {"base_channels": 4, "depth": 3, "growth_rate": 4, "num_layers": 2},
    "multiresunet": {"base_channels": 6, "depth": 3},
}


def _build(key, num_classes=3):
    return create_model(key.split("_ds")[0].split("_resnet")[0], num_classes=num_classes, **TINY_2D[key])


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("key", sorted(TINY_2D))
def test_2d_forward_odd_sizes_backward_and_extras(key):
    torch.manual_seed(0)
    model = _build(key)
    for shape in [(1, 3, 67, 93), (2, 3, 33, 47)]:
        x = torch.randn(*shape, requires_grad=True)
        model.train()
        y = model(x)
        if isinstance(y, SegmentationOutput):
            assert len(y.aux) == len(y.aux_weights) >= 1
            assert all(a.shape == (shape[0], 3, *shape[2:]) for a in y.aux)
            total = y.logits.square().mean() + sum(w * a.square().mean() for w, a in zip(y.aux_weights, y.aux))
            y = y.logits
        else:
            total = y.square().mean()
        assert y.shape == (shape[0], 3, *shape[2:])
        total.backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert all(p.grad is not None for p in model.parameters())
        model.zero_grad()
        model.eval()
        with torch.no_grad():
            out = model(x.detach())
        assert isinstance(out, torch.Tensor) and out.shape == (shape[0], 3, *shape[2:])


def _shapes_batch():
    data = SyntheticShapes(2, image_size=64)
    images, masks = zip(*(data.generate(i) for i in range(2)))
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.from_numpy(np.stack(masks))


def _fit(model, x, y, steps=6, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        out = model(x)
        if isinstance(out, SegmentationOutput):
            loss = F.cross_entropy(out.logits, y) + sum(w * F.cross_entropy(a, y)
                                                         for w, a in zip(out.aux_weights, out.aux))
        else:
            loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("key", ["unetplusplus_ds", "dense_unet", "multiresunet"])
def test_2d_a_few_steps_lower_the_loss(key):
    torch.manual_seed(0)
    x, y = _shapes_batch()
    losses = _fit(_build(key, num_classes=5), x, y)
    assert min(losses[-3:]) < losses[0], losses


# --- U-Net++ ----------------------------------------------------------------------------

def test_unetplusplus_paper_parameter_count_and_nodes():
    model = create_model("unetplusplus", in_channels=1, num_classes=1, norm="none")
    print("unetplusplus params:", _n_params(model))
    assert _n_params(model) == 9_041_601  # paper Table 1: 9.04 M
    assert model.decoder.num_nodes == 10  # X^{i,j}, i + j <= 4, j >= 1
    assert model.encoder.out_channels == [32, 64, 128, 256, 512]
    # Node X^{i,j} sees j same-level nodes plus one upsampled node.
    assert model.decoder.blocks["0_4"][0][0].in_channels == 32 * 4 + 32
    assert model.decoder.blocks["1_2"][0][0].in_channels == 64 * 2 + 64


def test_unetplusplus_heads_on_top_nodes_accurate_and_fast_modes():
    torch.manual_seed(0)
    kwargs = {"num_classes": 2, "base_channels": 4, "depth": 3, "norm": "none", "deep_supervision": True}
    model = create_model("unetplusplus", **kwargs)
    x = torch.randn(1, 3, 33, 47)
    tops = model.decoder(model.encoder(upp.pad_to_multiple(x, 8)))
    assert [tuple(t.shape) for t in tops] == [(1, 4, 40, 48)] * 3  # X^{0,1}, X^{0,2}, X^{0,3}
    assert len(model.heads) == 3
    train_out = model.train()(x)
    heads = [*train_out.aux, train_out.logits]
    assert train_out.aux_weights == [1.0, 1.0]
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), torch.stack(heads).mean(0), atol=1e-6)
        pruned = create_model("unetplusplus", prune_level=2, **kwargs)
        pruned.load_state_dict(model.state_dict())
        assert torch.allclose(pruned.eval()(x), heads[1], atol=1e-6)
    with pytest.raises(ValueError, match="prune_level"):
        create_model("unetplusplus", num_classes=2, prune_level=2)


# --- Dense U-Net ------------------------------------------------------------------------

def test_dense_block_channels_and_connectivity():
    torch.manual_seed(0)
    block = DenseBlock(5, growth_rate=3, num_layers=4).eval()
    assert block.out_channels == 5 + 4 * 3
    assert [layer[2].in_channels for layer in block.layers] == [5, 8, 11, 14]
    seen = []
    hooks = [layer.register_forward_hook(lambda m, i, o: seen.append((i[0], o))) for layer in block.layers]
    x = torch.randn(2, 5, 9, 11)
    with torch.no_grad():
        y = block(x)
    for h in hooks:
        h.remove()
    assert y.shape == (2, 17, 9, 11)
    outputs = [o for _, o in seen]
    for l, (inp, _) in enumerate(seen):  # layer l's input is exactly x and every earlier output
        assert torch.equal(inp, torch.cat([x, *outputs[:l]], dim=1))
    # Zeroing every weight of the last layer except those reading layer 0's output: its
    # output then depends on layer 0 alone, so layer 0 really reaches the last layer.
    last = block.layers[-1][2]
    with torch.no_grad():
        keep = last.weight[:, 5:8].clone()
        last.weight.zero_()
        last.weight[:, 5:8] = keep
        y2 = block(x)
        layer0 = block.layers[0][2]
        layer0.weight.zero_()
        y3 = block(x)
    assert not torch.allclose(y2[:, -3:], y3[:, -3:])
    assert DenseLevel(5, 7, growth_rate=3, num_layers=2)(x).shape == (2, 7, 9, 11)


def test_dense_unet_level_widths():
    model = create_model("dense_unet", num_classes=2)
    assert model.encoder.out_channels == [32, 64, 128, 256, 512]
    print("dense_unet params:", _n_params(model))


# --- MultiResUNet -----------------------------------------------------------------------

def test_multires_block_widths_follow_the_formula():
    for u in (32, 64, 128, 256, 512):
        w = 1.67 * u
        assert mr.multires_widths(u) == (int(w / 6), int(w / 3), int(w / 2))
    assert mr.multires_widths(32) == (8, 17, 26)
    block = mr.MultiResBlock(3, 32)
    assert (block.conv1[0].out_channels, block.conv2[0].out_channels, block.conv3[0].out_channels) == (8, 17, 26)
    assert block.shortcut[0].kernel_size == (1, 1) and block.out_channels == 51
    assert block(torch.randn(2, 3, 8, 8)).shape == (2, 51, 8, 8)


def test_multiresunet_res_paths_and_parameter_count():
    model = create_model("multiresunet", num_classes=1)
    assert [len(p) for p in model.encoder.paths] == [4, 3, 2, 1]
    assert [p[0].conv[0].out_channels for p in model.encoder.paths] == [32, 64, 128, 256]
    n = _n_params(model)
    print("multiresunet params:", n, "(paper: 7.26 M)")
    assert abs(n - 7.26e6) / 7.26e6 < 0.01
    with pytest.raises(ValueError, match="Res path length"):
        mr.ResPath(4, 4, length=0)


# --- 3D U-Net ---------------------------------------------------------------------------

def test_unet3d_channel_plan_matches_fig1_and_parameter_count():
    analysis, synthesis = u3.channel_plan(32, 3)
    assert analysis == [(32, 64), (64, 128), (128, 256), (256, 512)]
    assert synthesis == [(256, 256), (128, 128), (64, 64)]
    model = create_model("unet3d", in_channels=3, num_classes=3)
    assert [up.out_channels for up in model.ups] == [512, 256, 128]  # up-convolutions keep the width
    assert model.up_blocks[0][0][0].in_channels == 512 + 256
    no_bn = sum(p.numel() for m in model.modules() if not isinstance(m, torch.nn.BatchNorm3d)
                for p in m.parameters(recurse=False))
    print("unet3d params:", _n_params(model), "without batch norm:", no_bn)
    assert no_bn == 19_069_955  # the paper's Sec. 3 figure


def _sphere(size=16):
    zz, yy, xx = np.mgrid[:size, :size, :size]
    mask = ((zz - 8) ** 2 + (yy - 7) ** 2 + (xx - 9) ** 2) < 25
    rng = np.random.default_rng(0)
    vol = mask.astype(np.float32) + 0.3 * rng.standard_normal(mask.shape).astype(np.float32)
    return torch.from_numpy(vol)[None, None], torch.from_numpy(mask.astype(np.int64))[None]


def test_unet3d_odd_sizes_backward_and_training():
    torch.manual_seed(0)
    model = create_model("unet3d", in_channels=1, num_classes=2, base_channels=4, depth=2)
    x = torch.randn(1, 1, 19, 35, 37, requires_grad=True)
    model(x).square().mean().backward()
    assert torch.isfinite(x.grad).all() and all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        assert model.eval()(x.detach()).shape == (1, 2, 19, 35, 37)
    with pytest.raises(ValueError, match="D, H, W"):
        model(torch.randn(1, 1, 16, 16))
    vol, mask = _sphere()
    losses = _fit(create_model("unet3d", in_channels=1, num_classes=2, base_channels=4, depth=2), vol, mask)
    assert min(losses[-3:]) < losses[0], losses
